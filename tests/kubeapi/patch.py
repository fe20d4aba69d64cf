"""The three patch formats kube-apiserver accepts, applied to a stored object.

- JSON merge patch (RFC 7386): every kind.
- JSON patch (RFC 6902): every kind (the ``jsonpatch`` library).
- Strategic merge patch: built-in kinds only (custom resources answer 415, as the real server
  does). Lists with a patch merge key in the Kubernetes API (containers by ``name``, volume
  mounts by ``mountPath``...) are merged item by item; other lists are replaced; ``$patch:
  delete`` and ``$patch: replace`` are honoured; ``$setElementOrder``/``$retainKeys`` directives
  are accepted and ignored (order and retained keys only matter to server-side apply).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch

from tests.kubeapi.model import ApiError

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

# Field name -> patch merge key, as the Go types' `patchMergeKey` tags declare them.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "ownerReferences": "uid",
    "conditions": "type",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
}
# Lists of scalars the Go types merge as sets.
MERGED_SCALAR_LISTS = {"finalizers"}


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: dict[str, Any], operations: Any) -> dict[str, Any]:
    if not isinstance(operations, list):
        raise ApiError.bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    try:
        return dict(jsonpatch.apply_patch(target, operations, in_place=False))
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
        raise ApiError(
            422, "Invalid", f"the server rejected our request due to an error in our request: {err}"
        ) from err


def _strategic_list(field: str, target: list[Any], patch: list[Any]) -> list[Any]:
    key = MERGE_KEYS.get(field)
    if field in MERGED_SCALAR_LISTS:
        return list(dict.fromkeys([*target, *patch]))
    if key is None:
        return [item for item in copy.deepcopy(patch) if not (isinstance(item, dict) and "$patch" in item)]
    result = [copy.deepcopy(item) for item in target]
    for item in patch:
        if not isinstance(item, dict):
            raise ApiError.bad_request(f"strategic merge patch: items of {field} must be objects")
        directive = item.get("$patch")
        index = next(
            (i for i, old in enumerate(result) if isinstance(old, dict) and old.get(key) == item.get(key)), None
        )
        if directive == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append(strategic_merge({}, item))
        else:
            result[index] = strategic_merge(result[index], item)
    return result


def strategic_merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$") or key.startswith("$setElementOrder/") or key.startswith("$retainKeys"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _strategic_list(key, result[key], value)
        elif isinstance(value, list):
            result[key] = _strategic_list(key, [], value)
        else:
            result[key] = strategic_merge(result.get(key), value)
    return result


def apply_patch(content_type: str, target: dict[str, Any], raw: bytes, *, custom: bool) -> dict[str, Any]:
    """``target`` patched; raises 415 for formats the resource does not accept, 400 for bad bodies."""
    media = content_type.split(";")[0].strip().lower()
    if media == APPLY_PATCH:
        # Server-side apply needs managed fields; no kubetune component uses it (docs/testing.md).
        raise ApiError(415, "UnsupportedMediaType", "server-side apply is not implemented by the test API server")
    if media not in (MERGE_PATCH, JSON_PATCH, STRATEGIC_MERGE_PATCH) or (media == STRATEGIC_MERGE_PATCH and custom):
        raise ApiError.unsupported_media_type(media)
    try:
        patch = json.loads(raw or b"null")
    except ValueError as err:
        raise ApiError.bad_request(f"error decoding patch: {err}") from err
    if media == JSON_PATCH:
        return json_patch(target, patch)
    if not isinstance(patch, dict):
        raise ApiError.bad_request("error decoding patch: a merge patch must be a JSON object")
    if media == MERGE_PATCH:
        return dict(merge_patch(target, patch))
    return dict(strategic_merge(target, patch))
