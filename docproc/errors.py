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
    +-- ConfigurationError            (the operator's side)
    |   +-- ModelUnavailable          model_unavailable     503
    |   +-- EngineUnavailable         engine_unavailable    503
    |   +-- InvalidSchemaFile         invalid_schema_file   500

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


# Codes a single page can end with while the document as a whole goes on.
PAGE_ERROR_CODES = {
    "needs_model": "the page has no usable text layer; run it with a model engine",
    "invalid_output": "the model output did not parse or did not match the schema",
    "degenerate_output": "the model output looped (repetition) even after a retry",
    "inference_error": "the engine raised while processing the page",
}
