package handler

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"go.uber.org/zap"

	"github.com/hypersync/hypersync/internal/codes"
	"github.com/hypersync/hypersync/shapes"
)

// requestError is a request that cannot be processed at all.
type requestError struct {
	status int
	code   string
	msg    string
}

func (e *requestError) Error() string { return e.msg }

func badRequest(code, format string, args ...any) *requestError {
	return &requestError{http.StatusBadRequest, code, fmt.Sprintf(format, args...)}
}

// writeError answers status with an error body; a 503 tells the client
// when to come back.
func writeError(w http.ResponseWriter, status int, code, msg string) {
	// an error answers no pull: it sets no cursor cookie
	w.Header().Del("Set-Cookie")
	if status == http.StatusServiceUnavailable && w.Header().Get("Retry-After") == "" {
		w.Header().Set("Retry-After", "5")
	}
	writeJSON(w, status, errorBody{Status: "error", Error: code, Message: msg})
}

// writeOverloaded answers a request that found its budget full.
func writeOverloaded(w http.ResponseWriter, op string) {
	w.Header().Set("Retry-After", "1")
	writeError(w, http.StatusServiceUnavailable, codes.Overloaded, "too many "+op+"es at once on this server; try again shortly")
}

// storeError answers a failure of the store: 403 for a user the operator
// erased, 503 when the database cannot be used now, schema-mismatch when a table does not match its shape, and
// 500 for anything else, which is a bug.
func (h *Handler) storeError(w http.ResponseWriter, r *http.Request, ctx context.Context, op string, err error) {
	var schemaErr *shapes.SchemaError
	switch {
	case r.Context().Err() != nil:
		// The client went away: nobody reads an answer.
		h.cfg.Logger.Debug("client gone", zap.String("op", op), zap.Error(err))
		return
	case errors.Is(err, shapes.ErrErased):
		writeError(w, http.StatusForbidden, codes.UserErased, "this user's data was erased; their requests are refused")
	case errors.Is(err, shapes.ErrUnavailable) || ctx.Err() != nil:
		h.logger(r).Warn("database unavailable", zap.String("op", op), zap.Error(err))
		writeError(w, http.StatusServiceUnavailable, codes.DatabaseUnavailable, "the database cannot be reached; try again later")
	case errors.As(err, &schemaErr), errors.Is(err, shapes.ErrSchemaChanged):
		h.logger(r).Error("shape does not match its table", zap.String("op", op), zap.Error(err))
		writeError(w, http.StatusInternalServerError, codes.SchemaMismatch, err.Error())
	default:
		h.logger(r).Error("sync failed", zap.String("op", op), zap.Error(err))
		writeError(w, http.StatusInternalServerError, "internal", "the server failed; see its log")
	}
}
