package eventhub

import (
	"errors"
	"net/http"

	"amqphub/internal/auth"
	"amqphub/internal/rest"
)

// codeQuotaExceeded is IoT Hub's error code for a reached limit (403002).
const codeQuotaExceeded rest.ErrorCode = "IotHubQuotaExceeded"

// registerREST installs the consumer group routes. IoT Hub manages these
// groups through Azure Resource Manager, which has no counterpart here, so
// the paths are the hub's own (see the package doc).
func (ep *endpoint) registerREST(h *rest.Handler) {
	read := anyRight(auth.ServiceConnect, auth.RegistryRead)
	write := anyRight(auth.ServiceConnect, auth.RegistryWrite)
	h.Handle("GET /eventHubs/consumerGroups", 0, read(ep.restList))
	h.Handle("GET /eventHubs/consumerGroups/{name}", 0, read(ep.restGet))
	h.Handle("PUT /eventHubs/consumerGroups/{name}", 0, write(ep.restCreate))
	h.Handle("DELETE /eventHubs/consumerGroups/{name}", 0, write(ep.restDelete))
}

// anyRight wraps a route so that it runs for identities holding at least
// one of the rights (rest.Handle checks all of a set).
func anyRight(rights ...auth.Rights) func(rest.AuthorizedFunc) rest.AuthorizedFunc {
	return func(fn rest.AuthorizedFunc) rest.AuthorizedFunc {
		return func(w http.ResponseWriter, r *http.Request, id auth.Identity) {
			for _, need := range rights {
				if id.Kind == auth.KindPolicy && id.Rights.Has(need) {
					fn(w, r, id)
					return
				}
			}
			var names []string
			for _, need := range rights {
				names = append(names, need.String())
			}
			rest.WriteError(w, http.StatusUnauthorized, rest.CodeUnauthorized, "the token needs a policy with "+names[0]+" or "+names[len(names)-1])
		}
	}
}

func (ep *endpoint) restList(w http.ResponseWriter, r *http.Request, _ auth.Identity) {
	rest.WriteJSON(w, http.StatusOK, ep.groups.list())
}

func (ep *endpoint) restGet(w http.ResponseWriter, r *http.Request, _ auth.Identity) {
	name := r.PathValue("name")
	g, ok := ep.groups.get(name)
	if !ok {
		rest.WriteError(w, http.StatusNotFound, rest.CodeNotFound, "consumer group "+quote(name)+" does not exist")
		return
	}
	rest.WriteJSON(w, http.StatusOK, g)
}

func (ep *endpoint) restCreate(w http.ResponseWriter, r *http.Request, _ auth.Identity) {
	g, created, err := ep.groups.create(r.PathValue("name"), ep.now())
	switch {
	case errors.Is(err, ErrInvalidGroupName):
		rest.WriteError(w, http.StatusBadRequest, rest.CodeArgumentInvalid, err.Error())
	case errors.Is(err, ErrTooManyGroups):
		rest.WriteError(w, http.StatusForbidden, codeQuotaExceeded, err.Error())
	case err != nil:
		ep.logger.Error("eventhub: creating a consumer group", "err", err)
		rest.WriteError(w, http.StatusInternalServerError, rest.CodeServerError, "the consumer group could not be saved")
	case created:
		rest.WriteJSON(w, http.StatusCreated, g)
	default:
		rest.WriteJSON(w, http.StatusOK, g)
	}
}

func (ep *endpoint) restDelete(w http.ResponseWriter, r *http.Request, _ auth.Identity) {
	name := r.PathValue("name")
	err := ep.groups.remove(name)
	switch {
	case errors.Is(err, ErrDefaultGroupFixed):
		rest.WriteError(w, http.StatusBadRequest, rest.CodeArgumentInvalid, err.Error())
	case errors.Is(err, ErrGroupNotFound):
		rest.WriteError(w, http.StatusNotFound, rest.CodeNotFound, err.Error())
	case err != nil:
		ep.logger.Error("eventhub: deleting a consumer group", "err", err)
		rest.WriteError(w, http.StatusInternalServerError, rest.CodeServerError, "the consumer group could not be deleted")
	default:
		ep.dropGroup(name)
		w.WriteHeader(http.StatusNoContent)
	}
}

func quote(s string) string { return "'" + s + "'" }
