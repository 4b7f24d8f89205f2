// Package codes is hypersync's wire vocabulary of error codes, in one
// list. Clients and tests outside this repository match these strings:
// they are a contract, and never change. The README's protocol section
// shows each with its status.
package codes

// The codes of a rejected change, in a push answer's rejectedChanges.
const (
	// UnknownShape: no shape is configured with the change's shapeKey.
	UnknownShape = "unknown-shape"
	// InvalidPayload: the payload is not an object, lacks a key field, or
	// has a value its column cannot hold (or would store changed).
	InvalidPayload = "invalid-payload"
	// UserMismatch: the change's userId is not the authenticated user, or
	// its key names another user's row.
	UserMismatch = "user-mismatch"
	// Forbidden: a change of a shared shape the user may not make.
	Forbidden = "forbidden"
	// InvalidChange: the change is not an object, or lacks a string
	// changeId or shapeKey.
	InvalidChange = "invalid-change"
	// DuplicateChangeID: an earlier change of the push has its changeId.
	DuplicateChangeID = "duplicate-change-id"
	// InvalidUpdatedAt: updatedAt is not RFC 3339, is before 1970, or is
	// more than 24 h ahead of the server.
	InvalidUpdatedAt = "invalid-updated-at"
)

// The codes of a request that cannot be processed at all: the error of
// an error body, {"status":"error","error":"<code>","message":"…"}.
const (
	InvalidJSON          = "invalid-json"           // 400
	InvalidBody          = "invalid-body"           // 400: the body could not be read
	InvalidRequest       = "invalid-request"        // 400
	InvalidLastPull      = "invalid-last-pull"      // 400
	InvalidLimit         = "invalid-limit"          // 400
	Unauthenticated      = "unauthenticated"        // 401
	UserErased           = "user-erased"            // 403: the operator erased the user (caddy hypersync erase)
	NotFound             = "not-found"              // 404
	MethodNotAllowed     = "method-not-allowed"     // 405, with Allow
	BodyTooLarge         = "body-too-large"         // 413
	BatchTooLarge        = "batch-too-large"        // 413
	UnsupportedMediaType = "unsupported-media-type" // 415
	TooManyStreams       = "too-many-streams"       // 429 for one user's streams, 503 for the instance's
	TooManyRefusals      = "too-many-refusals"      // 429, with Retry-After: the user's pushes had too many changes refused (refusal_rate)
	SchemaMismatch       = "schema-mismatch"        // 500: a table no longer matches its shape
	DatabaseUnavailable  = "database-unavailable"   // 503, with Retry-After
	Overloaded           = "overloaded"             // 503, with Retry-After
)
