"""Versioned schema migrations. Append only: a released migration is never edited."""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE datasets (
            digest TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            format TEXT NOT NULL,
            records INTEGER NOT NULL,
            source TEXT,
            created_at TEXT NOT NULL
        );
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            workflow TEXT NOT NULL,
            spec_json TEXT NOT NULL,
            status TEXT NOT NULL,
            worker_id TEXT,
            error TEXT,
            created_at TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT
        );
        CREATE INDEX runs_status ON runs(status, created_at);
        CREATE TABLE stages (
            run_id TEXT NOT NULL REFERENCES runs(id),
            name TEXT NOT NULL,
            uses TEXT NOT NULL,
            position INTEGER NOT NULL,
            status TEXT NOT NULL,
            cache_key TEXT,
            skipped INTEGER NOT NULL DEFAULT 0,
            inputs_json TEXT,
            outputs_json TEXT,
            progress_json TEXT,
            error TEXT,
            started_at TEXT,
            finished_at TEXT,
            PRIMARY KEY (run_id, name)
        );
        CREATE INDEX stages_cache ON stages(uses, cache_key, status);
        CREATE TABLE stage_metrics (
            run_id TEXT NOT NULL,
            stage TEXT NOT NULL,
            step INTEGER NOT NULL,
            name TEXT NOT NULL,
            value REAL NOT NULL,
            PRIMARY KEY (run_id, stage, name, step)
        );
        CREATE TABLE models (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL,
            base_model TEXT NOT NULL,
            base_digest TEXT NOT NULL,
            dataset_digest TEXT,
            tree_digest TEXT NOT NULL,
            config_json TEXT,
            eval_json TEXT,
            manifest_digest TEXT,
            run_id TEXT,
            created_at TEXT NOT NULL
        );
        CREATE TABLE promotions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            model_id TEXT NOT NULL REFERENCES models(id),
            manifest_digest TEXT NOT NULL,
            decision_json TEXT NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE TABLE aliases (
            name TEXT PRIMARY KEY,
            model_id TEXT NOT NULL,
            lora_name TEXT NOT NULL,
            base_model TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE TABLE alias_history (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            alias TEXT NOT NULL,
            model_id TEXT NOT NULL,
            lora_name TEXT NOT NULL,
            at TEXT NOT NULL
        );
        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            prefix TEXT NOT NULL,
            created_at TEXT NOT NULL,
            revoked_at TEXT
        );
        CREATE TABLE audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at TEXT NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            subject TEXT,
            detail_json TEXT
        );
        CREATE TABLE workers (
            id TEXT PRIMARY KEY,
            pid INTEGER NOT NULL,
            heartbeat_at TEXT NOT NULL
        );
        """,
    ),
    (
        2,
        """
        ALTER TABLE api_keys ADD COLUMN role TEXT NOT NULL DEFAULT 'inference';
        ALTER TABLE api_keys ADD COLUMN models_json TEXT;
        ALTER TABLE api_keys ADD COLUMN expires_at TEXT;
        ALTER TABLE api_keys ADD COLUMN last_used_at TEXT;
        ALTER TABLE api_keys ADD COLUMN rpm INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE api_keys ADD COLUMN tpm INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE api_keys ADD COLUMN created_by TEXT;
        CREATE TABLE rate_buckets (
            key_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            level REAL NOT NULL,
            updated REAL NOT NULL,
            PRIMARY KEY (key_id, kind)
        );
        ALTER TABLE audit ADD COLUMN prev_hash TEXT;
        ALTER TABLE audit ADD COLUMN hash TEXT;
        ALTER TABLE runs ADD COLUMN submitted_by TEXT
        """,
    ),
    (
        3,
        """
        ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 50;
        ALTER TABLE runs ADD COLUMN control TEXT;
        ALTER TABLE runs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE runs ADD COLUMN time_limit_s REAL;
        ALTER TABLE runs ADD COLUMN resources_json TEXT;
        ALTER TABLE runs ADD COLUMN notice TEXT;
        ALTER TABLE runs ADD COLUMN ran_s REAL NOT NULL DEFAULT 0;
        CREATE INDEX runs_queue ON runs(status, priority, created_at);
        CREATE TABLE run_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL,
            at TEXT NOT NULL,
            kind TEXT NOT NULL,
            data_json TEXT NOT NULL
        );
        CREATE INDEX run_events_run ON run_events(run_id, id);
        CREATE TABLE engine_sleep (
            run_id TEXT PRIMARY KEY,
            since TEXT NOT NULL,
            retry_after_s REAL NOT NULL
        )
        """,
    ),
    (
        4,
        """
        CREATE TABLE model_calls (
            model TEXT NOT NULL,
            key_id TEXT NOT NULL,
            requests INTEGER NOT NULL,
            last_at TEXT NOT NULL,
            PRIMARY KEY (model, key_id)
        );
        ALTER TABLE models ADD COLUMN checked_at TEXT;
        ALTER TABLE models ADD COLUMN check_error TEXT
        """,
    ),
    (
        # Datasets get owners (the holder of the key that uploaded them, read from the dataset.add
        # audit rows; 'operator' for what the CLI added), keys get holders (their own namespace),
        # and admins can share a dataset. The same bytes of two owners are two rows, one blob.
        5,
        """
        ALTER TABLE api_keys ADD COLUMN holder TEXT;
        UPDATE api_keys SET holder = 'key-' || id WHERE holder IS NULL;
        CREATE TABLE datasets_owned (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            owner TEXT NOT NULL,
            digest TEXT NOT NULL,
            name TEXT NOT NULL,
            format TEXT NOT NULL,
            records INTEGER NOT NULL,
            source TEXT,
            created_at TEXT NOT NULL,
            UNIQUE (owner, digest)
        );
        INSERT INTO datasets_owned (owner, digest, name, format, records, source, created_at)
            SELECT COALESCE((SELECT 'key-' || substr(a.actor, 5) FROM audit a
                             WHERE a.action = 'dataset.add' AND a.subject = d.digest AND a.actor LIKE 'key:%'
                             ORDER BY a.id LIMIT 1), 'operator'),
                   d.digest, d.name, d.format, d.records, d.source, d.created_at
            FROM datasets d ORDER BY d.created_at, d.rowid;
        DROP TABLE datasets;
        ALTER TABLE datasets_owned RENAME TO datasets;
        CREATE INDEX datasets_by_name ON datasets(owner, name, created_at);
        CREATE INDEX datasets_by_digest ON datasets(digest);
        CREATE TABLE dataset_shares (
            dataset_id INTEGER NOT NULL REFERENCES datasets(id),
            grantee TEXT NOT NULL,
            shared_by TEXT NOT NULL,
            shared_at TEXT NOT NULL,
            PRIMARY KEY (dataset_id, grantee)
        )
        """,
    ),
    (
        6,
        """
        ALTER TABLE api_keys ADD COLUMN max_tokens INTEGER NOT NULL DEFAULT 0
        """,
    ),
    (
        # The promotion gate: policies per alias (versioned, each with a digest), promotion
        # requests with their approvals, signed promotion records, staging names, revocation.
        7,
        """
        CREATE TABLE gate_policies (
            alias TEXT NOT NULL,
            version INTEGER NOT NULL,
            policy_json TEXT NOT NULL,
            digest TEXT NOT NULL,
            set_by TEXT NOT NULL,
            set_at TEXT NOT NULL,
            PRIMARY KEY (alias, version)
        );
        CREATE TABLE promotion_requests (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            alias TEXT NOT NULL,
            staging_name TEXT NOT NULL,
            model_id TEXT NOT NULL REFERENCES models(id),
            run_id TEXT,
            author TEXT NOT NULL,
            author_key TEXT,
            manifest_digest TEXT NOT NULL,
            policy_version INTEGER NOT NULL,
            policy_digest TEXT NOT NULL,
            evaluation_digest TEXT NOT NULL,
            scores_json TEXT NOT NULL,
            champion_id TEXT,
            state TEXT NOT NULL,
            reason TEXT,
            created_at TEXT NOT NULL,
            decided_at TEXT,
            promotion_id INTEGER
        );
        CREATE INDEX promotion_requests_by_alias ON promotion_requests(alias, state);
        CREATE TABLE approvals (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            request_id INTEGER NOT NULL REFERENCES promotion_requests(id),
            key_id TEXT NOT NULL,
            holder TEXT NOT NULL,
            verdict TEXT NOT NULL,
            comment TEXT,
            bound_json TEXT NOT NULL,
            signature_json TEXT,
            at TEXT NOT NULL,
            UNIQUE (request_id, holder)
        );
        ALTER TABLE promotions ADD COLUMN alias TEXT;
        ALTER TABLE promotions ADD COLUMN request_id INTEGER;
        ALTER TABLE promotions ADD COLUMN record_digest TEXT;
        ALTER TABLE aliases ADD COLUMN staged_for TEXT;
        ALTER TABLE aliases ADD COLUMN audience TEXT;
        ALTER TABLE aliases ADD COLUMN promotion_id INTEGER;
        ALTER TABLE aliases ADD COLUMN revoked_note TEXT;
        ALTER TABLE alias_history ADD COLUMN promotion_id INTEGER;
        ALTER TABLE alias_history ADD COLUMN event TEXT;
        ALTER TABLE models ADD COLUMN revoked_at TEXT;
        ALTER TABLE models ADD COLUMN revoked_by TEXT;
        ALTER TABLE models ADD COLUMN revoked_reason TEXT
        """,
    ),
    (
        # Canary rollouts (serve/canary.py): a candidate with a promotion record for an alias
        # takes part of its requests for a window, judged against the champion by the gateway.
        8,
        """
        CREATE TABLE canaries (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            alias TEXT NOT NULL,
            champion_id TEXT NOT NULL,
            candidate_id TEXT NOT NULL,
            promotion_id INTEGER NOT NULL,
            percent REAL NOT NULL,
            window_s REAL NOT NULL,
            max_error_rate REAL NOT NULL,
            max_latency_ratio REAL NOT NULL,
            min_requests INTEGER NOT NULL,
            state TEXT NOT NULL,
            reason TEXT,
            stats_json TEXT,
            started_by TEXT NOT NULL,
            started_at TEXT NOT NULL,
            ends_at TEXT NOT NULL,
            decided_at TEXT
        );
        CREATE UNIQUE INDEX one_open_canary_per_alias ON canaries(alias) WHERE state IN ('running', 'passed')
        """,
    ),
]
