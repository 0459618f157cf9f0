"""The appliance context every service function takes: settings, metadata and artifact store."""

from __future__ import annotations

from dataclasses import dataclass

from airlock.config import Settings, get_settings
from airlock.meta import Meta, open_meta
from airlock.meta.anchor import Anchors
from airlock.store import ArtifactStore, open_store


@dataclass
class Airlock:
    settings: Settings
    meta: Meta
    store: ArtifactStore

    @classmethod
    def open(cls, settings: Settings | None = None) -> "Airlock":
        settings = settings or get_settings()
        settings.ensure_dirs()
        return cls(settings=settings, meta=open_meta(settings.db_path, Anchors.for_settings(settings)), store=open_store(settings))


def open_audit_log(settings: Settings | None = None) -> Meta:
    """The home's metadata and audit log alone, for a command run as root on a host that changes
    the installation, not the appliance (`airlock models install`): it makes none of the home's
    folders nor opens the store, which as a local store would create its folders, root's, in a
    home whose appliance keeps its artifacts in S3."""
    settings = settings or get_settings()
    settings.ensure_home()
    return open_meta(settings.db_path, Anchors.for_settings(settings))
