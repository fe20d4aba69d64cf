"""Object stores behind :class:`kubetune_trainer.storage.ObjectStore`: one module per remote scheme,
each implementing :class:`~kubetune_trainer.stores.base.RemoteBucket` (reads, create-only writes,
conditional updates, checksums checked by the server)."""
