"""The CLI's conventions (issue 18, docs/cli.md): every verb that reports something takes ``-o json|yaml``
and then prints one document, the same content in both, and nothing else on stdout; the older
``--json`` flags still work; the exit codes docs/cli.md lists are the contract's; ``kubetune completion
bash|zsh`` completes the verbs a real bash is given."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api import contract
from kubetune.api.contract import EXIT_CONFIG, EXIT_DAMAGED, EXIT_OK
from kubetune_trainer.cli import build_parser
from kubetune_trainer.cli import main as kubetune
from kubetune_trainer.output import render
from kubetune_trainer.storage import ObjectStore
from tests.trainer.test_serving_handoff import publish

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
# The verbs that only act (in a pod, or print a script): everything else reports, so takes -o.
NOT_REPORTING = {"preflight", "train", "completion", "logs"}  # logs prints the trainer's own output


def verbs(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every verb's parser, nested ones (``drift check``) by their whole name."""
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = verbs(sub, f"{prefix}{name} ")
                found |= nested or {f"{prefix}{name}": sub}
    return found


def documents(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = EXIT_OK) -> Any:
    """The verb's JSON document, after checking that its YAML document carries the same content and
    that stdout held the document alone (it parses whole)."""
    parsed = []
    for output, load in (("json", json.loads), ("yaml", yaml.safe_load)):
        assert kubetune([*argv, "-o", output]) == code
        parsed.append(load(capsys.readouterr().out))
    assert parsed[0] == parsed[1]
    return parsed[0]


def test_every_reporting_verb_takes_output_json_and_yaml_with_its_human_form_the_default() -> None:
    reporting = {name: parser for name, parser in verbs(build_parser()).items() if name not in NOT_REPORTING}
    assert set(reporting) >= {"validate", "verify", "promote", "rollback", "channel", "fetch", "versions", "serving"}
    assert {"drift check", "challenge", "submit", "status", "wait", "run", "reproduce"} <= set(reporting)
    for name, parser in reporting.items():
        (option,) = [a for a in parser._actions if "--output" in a.option_strings]
        assert option.option_strings == ["-o", "--output"], name
        choices = list(option.choices or [])
        assert choices[1:] == ["json", "yaml"] and option.default == choices[0], name


@pytest.mark.parametrize(
    ("verb", "argv"),
    [(["channel"], ["file:///x", "--channel", "prod"]), (["drift", "check"], ["--reference", "r", "--samples", "s"])],
)
def test_the_older_json_flag_is_a_hidden_alias_of_output_json(
    verb: list[str], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert build_parser().parse_args([*verb, *argv, "--json"]).output == "json"
    assert build_parser().parse_args([*verb, *argv]).output == "text"
    with pytest.raises(SystemExit):
        build_parser().parse_args([*verb, "--help"])
    assert "--output" in (shown := capsys.readouterr().out) and "--json" not in shown


def test_documents_keep_the_verbs_key_order_and_json_is_indented_by_two() -> None:
    document = {"version": "v1", "at": "now", "nested": [{"b": 1, "a": None}]}
    assert render(document, "json").splitlines()[1] == '  "version": "v1",'
    assert list(yaml.safe_load(render(document, "yaml"))) == ["version", "at", "nested"]
    assert render(document, "yaml").startswith("version: v1\nat: now\n")
    with pytest.raises(ValueError, match="not one of json, yaml"):
        render(document, "toml")


def test_validate_reports_each_manifest_and_still_says_why_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("apiVersion: kubetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: b}\nspec: {}\n")
    argv = ["validate", str(EXAMPLES / "support-tickets.yaml"), str(broken)]
    assert kubetune(["validate", str(EXAMPLES / "support-tickets.yaml"), "-o", "json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)[0]["valid"] is True
    for output, load in (("json", json.loads), ("yaml", yaml.safe_load)):
        assert kubetune([*argv, "-o", output]) == EXIT_CONFIG
        captured = capsys.readouterr()
        good, bad = load(captured.out)
        assert good == {
            "path": argv[1],
            "valid": True,
            "kind": "FineTuneJob",
            "name": "support-tickets",
            "error": None,
        }
        assert (bad["valid"], bad["kind"]) == (False, None) and "spec.dataset" in bad["error"]
        assert bad["error"] in captured.err


def test_the_channel_verbs_report_entries_the_history_holds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, output = ObjectStore(), f"file://{tmp_path}/out/tickets"
    first, second = (publish(tmp_path / name, store, output, gguf=True) for name in ("a", "b"))
    promoted = [
        documents_of_one(capsys, ["promote", v, "--channel", "prod", "-o", o])
        for v, o in ((first, "json"), (second, "yaml"))
    ]
    rolled = documents_of_one(capsys, ["rollback", output, "--channel", "prod", "--reason", "worse", "-o", "yaml"])
    history = documents(capsys, ["channel", output, "--channel", "prod"])
    assert [{"channel": "prod", **entry} for entry in history] == [*promoted, rolled]
    assert (rolled["action"], rolled["versionUri"], rolled["reason"]) == ("rollback", first, "worse")
    assert documents(capsys, ["channel", output, "--channel", "staging"]) == []

    listed = documents(capsys, ["versions", output])
    assert {row["version"]: row["channels"] for row in listed} == {
        first.rpartition("/")[2]: ["prod"],
        second.rpartition("/")[2]: [],
    }


def documents_of_one(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Any:
    """The document a verb that changes something (it cannot run twice alike) printed."""
    assert kubetune(argv) == EXIT_OK
    out = capsys.readouterr().out
    return json.loads(out) if argv[-1] == "json" else yaml.safe_load(out)


def test_verify_fetch_and_serving_report_what_they_checked_fetched_and_rendered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store, output = ObjectStore(), f"file://{tmp_path}/out/tickets"
    version_uri = publish(tmp_path, store, output, gguf=True)
    assert kubetune(["promote", version_uri, "--channel", "prod"]) == EXIT_OK
    capsys.readouterr()

    checked = documents(capsys, ["verify", version_uri])
    assert checked["versionUri"] == version_uri and checked["problems"] == [] and checked["promoted"] is None
    assert len(checked["intact"]) == 4, "two merged files and two GGUF files"

    fetch = ["fetch", output, "--channel", "prod", "--artifact", "gguf", "--dest", str(tmp_path / "current")]
    assert kubetune([*fetch, "-o", "json"]) == EXIT_OK
    fetched = json.loads(capsys.readouterr().out)
    version = version_uri.rpartition("/")[2]
    assert (fetched["version"], fetched["filesFetched"], fetched["damaged"]) == (version, 2, None)
    again = documents(capsys, fetch)
    assert again == {**fetched, "filesFetched": 0}, "already in place: nothing fetched"

    serve = ["serving", output, "--channel", "prod", "--name", "tickets", "--for"]
    rendered = documents(capsys, [*serve, "vllm"])
    assert kubetune([*serve, "vllm"]) == EXIT_OK
    assert rendered["objects"] == list(yaml.safe_load_all(capsys.readouterr().out)), "the same objects as the manifests"
    assert [o["kind"] for o in rendered["objects"]] == ["Deployment", "Service"] and rendered["modelfile"] is None
    modelfile = documents(capsys, [*serve, "ollama"])
    assert modelfile["objects"] == [] and "FROM ./tickets-q8_0.gguf" in modelfile["modelfile"]

    (tmp_path / "out" / "tickets" / version / "gguf" / "tickets-q8_0.gguf").write_bytes(b"x")
    damaged = documents(capsys, ["verify", version_uri], EXIT_DAMAGED)
    assert len(damaged["problems"]) == 1 and "tickets-q8_0.gguf" in damaged["problems"][0]


def completions(script: Path, line: str) -> list[str]:
    """What a real bash's completion offers for ``line`` (the cursor at its end), through the function
    the generated script registers for ``kubetune``."""
    words = line.split() + ([""] if line.endswith(" ") else [])
    program = (
        f"source {script}\n"
        f"COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}; COMP_WORDS=({' '.join(repr(w) for w in words)}); "
        f"COMP_CWORD={len(words) - 1}\n"
        "$(complete -p kubetune | sed -E 's/.*-F ([^ ]+) .*/\\1/') kubetune\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(["bash", "--norc", "-c", program], capture_output=True, text=True, timeout=30, check=True)
    return sorted(done.stdout.split())


def test_a_real_bash_completes_the_verbs_and_their_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kubetune(["completion", "bash"]) == EXIT_OK
    script = tmp_path / "kubetune.bash"
    script.write_text(capsys.readouterr().out)
    assert completions(script, "kubetune ver") == ["verify", "versions"]
    assert completions(script, "kubetune versions --out") == ["--output"]
    assert completions(script, "kubetune versions -o ") == ["json", "table", "yaml"]
    assert completions(script, "kubetune drift ") == ["check"]
    assert "completion" in completions(script, "kubetune ")


def test_zsh_completion_names_every_verb_and_its_output_formats(capsys: pytest.CaptureFixture[str]) -> None:
    # No zsh on the test machines: the script is checked for what zsh's _arguments is given.
    assert kubetune(["completion", "zsh"]) == EXIT_OK
    script = capsys.readouterr().out
    assert script.startswith("#compdef kubetune")
    for verb in verbs(build_parser()):
        assert f"\n    {verb.split()[-1]}:'" in script, verb
    versions = script.split("_shtab_kubetune_versions_options=(")[1].split("\n)")[0]
    assert '{-o,--output}"[' in versions and ":output:(table json yaml)" in versions


def test_the_documented_exit_codes_are_the_contracts_and_every_verb_is_documented() -> None:
    from kubetune_trainer import lifecycle
    from kubetune_trainer.drift import command as drift_command

    page = (ROOT / "docs" / "cli.md").read_text()
    rows = re.findall(r"^\| (\d+) \| `(EXIT_\w+)`", page, flags=re.MULTILINE)
    named = {**vars(contract), "EXIT_DRIFT": drift_command.EXIT_DRIFT, "EXIT_NOT_REACHED": lifecycle.EXIT_NOT_REACHED}
    assert {name: int(code) for code, name in rows} == {
        name: value for name, value in named.items() if name.startswith("EXIT_") and isinstance(value, int)
    }
    for verb in verbs(build_parser()):
        if verb not in NOT_REPORTING:
            assert f"| `kubetune {verb}" in page, f"docs/cli.md: no document for {verb}"
