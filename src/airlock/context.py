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
