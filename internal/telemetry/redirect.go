package telemetry

import (
	"fmt"
	"net/url"
	"strconv"

	"amqphub/amqp"
	"amqphub/internal/hub"
)

// redirect answers attaches on /messages/events/... with amqp:link:redirect.
// It needs nothing of the reader, so each can be tested alone.
type redirect struct {
	env *hub.Env
}

// RedirectAddress returns where a read of the hub's /messages/events route
// is sent: "amqps://{host}:{port}/{eventHubName}/$management" for the
// management node (the form the JS and C# samples parse with
// `:\d+/(.*)/\$management` to learn the entity name), or
// ".../{eventHubName}/ConsumerGroups/{cg}/Partitions/{p}" for a partition
// (uamqp-based clients reattach to the address as given). The scheme is
// amqp instead when only the plain listener is on.
func RedirectAddress(scheme, host string, port int, eventHubName string, r hub.Route) string {
	base := fmt.Sprintf("%s://%s:%d/%s", scheme, host, port, url.PathEscape(eventHubName))
	if r.Management {
		return base + "/$management"
	}
	return base + "/ConsumerGroups/" + url.PathEscape(r.ConsumerGroup) + "/Partitions/" + r.Partition
}

// Attach implements hub.Endpoint for hub.KindEventsRedirect. The partition
// is checked here: an unknown partition is amqp:not-found rather than a
// redirect to a link that would fail anyway. The consumer group is left to
// the Event-Hub-compatible endpoint, which owns the list of groups.
func (rd *redirect) Attach(req *hub.AttachRequest) *amqp.Error {
	env, r := rd.env, req.Route
	if !r.Management {
		if !req.Link.IsSender() {
			return amqp.NewError(amqp.ErrCondNotAllowed, "consumer group partitions are read-only; send telemetry to /devices/{id}/messages/events")
		}
		if r.ConsumerGroup == "" {
			return amqp.NewError(amqp.ErrCondNotFound, "the consumer group name is empty")
		}
		n := env.Log.Partitions()
		p, err := strconv.Atoi(r.Partition)
		if err != nil || p < 0 || p >= n {
			return amqp.NewError(amqp.ErrCondNotFound, fmt.Sprintf("partition %q does not exist: the hub has partitions 0 to %d", r.Partition, n-1))
		}
		r.Partition = strconv.Itoa(p)
	}
	scheme, port := "amqps", env.AMQPSPort
	if port == 0 {
		scheme, port = "amqp", env.AMQPPort
	}
	if port == 0 {
		return amqp.NewError(amqp.ErrCondNotImplemented, "the Event-Hub-compatible endpoint has no AMQP listener to redirect to")
	}
	return amqp.RedirectError(env.HostName, env.HostName, port, RedirectAddress(scheme, env.HostName, port, env.EventHubName, r))
}
