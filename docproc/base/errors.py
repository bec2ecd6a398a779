"""The errors docproc reports, in one hierarchy.

Every error a user can cause or see is a :class:`DocprocError` with a stable,
machine-readable ``code`` (what API clients and the CLI key on) and an HTTP
status for the service. Never match on messages; match on codes.

    DocprocError                      internal_error        500
    +-- InputError                    (bad input, known at intake)
    |   +-- EmptyDocument             empty_document        400
    |   +-- FileTooLarge              file_too_large        413
    |   +-- UnsupportedType           unsupported_type      415
    |   +-- CorruptDocument           corrupt_document      422
    |   +-- EncryptedDocument         encrypted_document    422
    |   +-- NoPages                   no_pages              422
    |   +-- TooManyPages              too_many_pages        413
    |   +-- ImageTooLarge             image_too_large       413
    |   +-- InvalidPageRange          invalid_page_range    422
    |   +-- UnknownSchema             unknown_schema        422
    |   +-- InvalidRequest            invalid_request       422
    |   +-- ModelNotDeployed          model_not_deployed    422   (re-process with another model)
    |   +-- WebhookUrlRefused         webhook_url_refused   422   (SSRF guard)
    |   +-- WebhookNotConfigured      webhook_not_configured 422  (tenant has no signing secret)
    |   +-- ContentTooLarge           content_too_large     413   (PDF content inflates too far)
    |   +-- UploadInterrupted         upload_interrupted    422   (kept on a batch whose upload was lost)
    +-- ConfigurationError            (the operator's side)
    |   +-- ModelUnavailable          model_unavailable     503
    |   +-- EngineUnavailable         engine_unavailable    503
    |   +-- InvalidSchemaFile         invalid_schema_file   500
    |   +-- InferenceServerError      inference_server_error 502  (engine openai: an unusable answer)
    |       +-- InferenceServerTimeout  timeout             504   (engine openai: no answer in time)
    +-- ClientError                   (the request, not the document)
    |   +-- Unauthorized              unauthorized          401
    |   +-- NotFound                  not_found             404
    |   +-- IdempotencyConflict       idempotency_conflict  409
    |   +-- ResultNotReady            result_not_ready      409   (the job or page still runs)
    |   +-- RateLimited               rate_limited          429   .retry_after (s)
    |   +-- WebhookSignatureInvalid   webhook_signature_invalid 401 (docproc.delivery.webhooks.verify)
    |   +-- WebhookEndpointDisabled   webhook_endpoint_disabled 409 (endpoint answered 410)
    |   +-- JobStateConflict          job_state_conflict    409   (admin: retry a running job, cancel an ended one)
    |   +-- RequestTimeout            request_timeout       408   (the request body did not arrive in time)
    |   +-- UnsupportedMediaType      unsupported_media_type 415  (a request Content-Type the route does not read)
    +-- ServiceUnavailable            service_unavailable   503   (Redis down ...)
        +-- StorageError              storage_error         503   .retryable
        +-- InferenceServerUnavailable inference_server_unavailable 503 (engine openai: down, 429/5xx after retries)

Page-level outcomes that are not exceptions (a page that needs a model, a model
output that does not parse) are reported in the page result with the codes in
:data:`PAGE_ERROR_CODES`.
"""

from __future__ import annotations

from typing import Any


class DocprocError(Exception):
    """Base of every docproc error: a code, a message, optional details."""

    code = "internal_error"
    http_status = 500

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            out["details"] = self.details
        return out

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InputError(DocprocError):
    """The document or request is bad; retrying the same input cannot help."""

    code = "invalid_input"
    http_status = 422


class EmptyDocument(InputError):
    code = "empty_document"
    http_status = 400


class FileTooLarge(InputError):
    code = "file_too_large"
    http_status = 413


class UnsupportedType(InputError):
    code = "unsupported_type"
    http_status = 415


class CorruptDocument(InputError):
    code = "corrupt_document"


class EncryptedDocument(InputError):
    code = "encrypted_document"


class NoPages(InputError):
    code = "no_pages"


class TooManyPages(InputError):
    code = "too_many_pages"
    http_status = 413


class ImageTooLarge(InputError):
    code = "image_too_large"
    http_status = 413


class InvalidPageRange(InputError):
    code = "invalid_page_range"


class UnknownSchema(InputError):
    code = "unknown_schema"


class InvalidRequest(InputError):
    code = "invalid_request"


class ModelNotDeployed(InputError):
    """A re-process asked for a model other than the one this deployment serves."""

    code = "model_not_deployed"


class WebhookUrlRefused(InputError):
    """A webhook URL docproc will not call: not http(s), or its host resolves to a
    non-public address (SSRF guard, docproc.delivery.ssrf); ``details.reason`` says which check."""

    code = "webhook_url_refused"


class WebhookNotConfigured(InputError):
    """A webhook asked for by a tenant that has no signing secret (settings.webhook_secrets)."""

    code = "webhook_not_configured"


class ContentTooLarge(InputError):
    """A PDF whose page content streams inflate past ``max_content_bytes`` (a Flate bomb):
    refused at intake, before any page is interpreted."""

    code = "content_too_large"
    http_status = 413


class UploadInterrupted(InputError):
    """An upload batch whose body stopped arriving (the API process reading it was lost);
    kept on the batch, whose listing ends with the documents received before."""

    code = "upload_interrupted"


class ConfigurationError(DocprocError):
    """The deployment is missing something (a model, a package, a file)."""

    code = "configuration_error"
    http_status = 503


class ModelUnavailable(ConfigurationError):
    code = "model_unavailable"


class EngineUnavailable(ConfigurationError):
    code = "engine_unavailable"


class InvalidSchemaFile(ConfigurationError):
    code = "invalid_schema_file"
    http_status = 500


class InferenceServerError(ConfigurationError):
    """The OpenAI-compatible inference server answered, but not with a usable chat
    completion (a 4xx other than 429, a body that is not one, no choices). Retrying
    does not help: the page fails with this code."""

    code = "inference_server_error"
    http_status = 502


class InferenceServerTimeout(InferenceServerError):
    """The inference server did not answer within ``openai_timeout_s`` (the page fails)."""

    code = "timeout"
    http_status = 504


class ClientError(DocprocError):
    """The request cannot be served as sent (credentials, a missing resource, a conflict, a rate)."""

    code = "client_error"
    http_status = 400


class Unauthorized(ClientError):
    code = "unauthorized"
    http_status = 401


class NotFound(ClientError):
    """No such resource, or one that belongs to another tenant (never told apart)."""

    code = "not_found"
    http_status = 404


class IdempotencyConflict(ClientError):
    """An Idempotency-Key reused for a different request."""

    code = "idempotency_conflict"
    http_status = 409


class ResultNotReady(ClientError):
    """A result asked for before its job (or page) finished; poll the job and ask again."""

    code = "result_not_ready"
    http_status = 409


class RateLimited(ClientError):
    """Too many requests; ``retry_after`` is the seconds until the window resets."""

    code = "rate_limited"
    http_status = 429

    def __init__(self, message: str, *, retry_after: int, **details: Any) -> None:
        super().__init__(message, retry_after=retry_after, **details)
        self.retry_after = retry_after


class WebhookSignatureInvalid(ClientError):
    """A received webhook failed verification (docproc.delivery.webhooks.verify): missing headers,
    a timestamp outside the tolerance, or no signature matching a known secret."""

    code = "webhook_signature_invalid"
    http_status = 401


class WebhookEndpointDisabled(ClientError):
    """A redelivery to an endpoint disabled by a 410 answer; re-enable it first."""

    code = "webhook_endpoint_disabled"
    http_status = 409


class JobStateConflict(ClientError):
    """An operator action the job's state does not allow (docproc.cli.admin): retrying a job
    that has not ended, cancelling one that already has (terminal states never change)."""

    code = "job_state_conflict"
    http_status = 409


class RequestTimeout(ClientError):
    """A request body that did not arrive within ``request_body_timeout_s`` (a client that
    trickles bytes, or stalls): the request is dropped with 408."""

    code = "request_timeout"
    http_status = 408


class UnsupportedMediaType(ClientError):
    """A request body in a Content-Type the route does not read (the document's own type is
    :class:`UnsupportedType`)."""

    code = "unsupported_media_type"
    http_status = 415


class ServiceUnavailable(DocprocError):
    """A backing service (Redis, storage) cannot be reached; try again later."""

    code = "service_unavailable"
    http_status = 503


class StorageError(ServiceUnavailable):
    """Object storage failed. ``retryable`` is True for transient faults (unreachable,
    throttled, 5xx) and False for ones a retry cannot fix (access denied, missing bucket,
    a write-once object that exists with other content)."""

    code = "storage_error"
    http_status = 503

    def __init__(self, message: str, *, retryable: bool = True, **details: Any) -> None:
        super().__init__(message, **details)
        self.retryable = retryable


class InferenceServerUnavailable(ServiceUnavailable):
    """The OpenAI-compatible inference server cannot be reached, or kept answering 429/5xx
    through every retry; transient: the page task is tried again later."""

    code = "inference_server_unavailable"
    http_status = 503


# Codes a single page can end with while the document as a whole goes on.
PAGE_ERROR_CODES = {
    "needs_model": "the page has no usable text layer; run it with a model engine",
    "invalid_output": "the model output did not parse or did not match the schema",
    "degenerate_output": "the model output looped (repetition) even after a retry",
    "inference_error": "the engine raised while processing the page",
    "timeout": "the page ran past the inference timeout or the task time limit",
    "too_many_attempts": "the page was started more than max_attempts times (its workers were lost)",
}
