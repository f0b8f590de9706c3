// Package httpx holds the request handling the inbound endpoints share.
package httpx

import (
	"errors"
	"io"
	"net/http"
)

// ReadPost reads a POST request's body up to limit bytes. On any problem it
// answers the request itself (405, 413 or 400) and returns ok=false, with
// tooLarge set for an oversized body so the caller can log it.
func ReadPost(w http.ResponseWriter, r *http.Request, limit int64) (body []byte, ok, tooLarge bool) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return nil, false, false
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		if _, isMax := errors.AsType[*http.MaxBytesError](err); isMax {
			http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
			return nil, false, true
		}
		http.Error(w, "reading request body failed", http.StatusBadRequest)
		return nil, false, false
	}
	return body, true, false
}
