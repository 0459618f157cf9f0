"""One small error tree, mapped once to HTTP status codes and once to CLI exit codes.

Every error carries a human message that says what went wrong and where; validators put every
problem they found into `problems` so a user sees all of them at once.
"""

from __future__ import annotations


class AirlockError(Exception):
    """Base of every error airlock raises on purpose."""

    http_status = 500
    exit_code = 1
    code = "internal_error"

    def __init__(self, message: str, *, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems = list(problems or [])

    def __str__(self) -> str:
        if not self.problems:
            return self.message
        return self.message + "\n" + "\n".join(f"  - {p}" for p in self.problems)


class InvalidInput(AirlockError):
    """The caller gave something malformed: a dataset, a workflow spec, a request body."""

    http_status = 400
    exit_code = 2
    code = "invalid_request_error"


class NotFound(AirlockError):
    """A named thing (model, dataset, run, alias) does not exist."""

    http_status = 404
    exit_code = 3
    code = "not_found"


class Unauthorized(AirlockError):
    """Missing or wrong API key."""

    http_status = 401
    exit_code = 4
    code = "invalid_api_key"


class IntegrityFailure(AirlockError):
    """Stored bytes or a signature do not match what was recorded: possible tampering."""

    http_status = 409
    exit_code = 5
    code = "integrity_error"


class GateRefused(AirlockError):
    """The promotion gate refused a candidate (signature, digests or thresholds)."""

    http_status = 409
    exit_code = 6
    code = "gate_refused"


class NotReady(AirlockError):
    """A service this call needs (vLLM, the worker) is not running or not ready yet."""

    http_status = 503
    exit_code = 7
    code = "service_unavailable"


class StageFailed(AirlockError):
    """A workflow stage failed; the message names the stage and the reason."""

    http_status = 422
    exit_code = 8
    code = "stage_failed"


class Forbidden(AirlockError):
    """A valid key whose role lacks the permission a call needs; the message names it."""

    http_status = 403
    exit_code = 9
    code = "insufficient_permissions"


class RateLimited(AirlockError):
    """A key went over its requests or tokens per minute; `retry_after` says when to try again."""

    http_status = 429
    exit_code = 10
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooLarge(AirlockError):
    """A request body over the configured cap."""

    http_status = 413
    exit_code = 2
    code = "request_too_large"


class Conflict(AirlockError):
    """The thing exists but is in a state that does not allow the change (a finished run)."""

    http_status = 409
    exit_code = 11
    code = "conflict_error"


class ConfigurationError(AirlockError):
    """A setting names something that is not there (the served base model's folder, a certificate):
    no restart can help, so a supervisor stops at once instead of restarting the service forever.
    The message names the setting (its AIRLOCK_ variable)."""

    http_status = 500
    # sysexits.h's EX_CONFIG: how a service tells its supervisor that its configuration is wrong.
    exit_code = 78
    code = "configuration_error"
