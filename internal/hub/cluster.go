package hub

import (
	"encoding/base64"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Cluster is set in Env when the hub runs as one node of several on a NATS
// JetStream cluster. Nodes then keep no durable state of their own: every
// feature stores in JetStream (streams, key-value buckets) and coordinates
// with the other nodes through NATS subjects, so that a client gets the
// same answer whichever node it reached.
type Cluster struct {
	// NodeID names this node uniquely among the cluster's live nodes (a
	// random id by default); it appears in leases and logs.
	NodeID string
	// Conn is the node's NATS connection (reconnecting for ever); the
	// server owns it and closes it after every feature closed.
	Conn *nats.Conn
	// JS is the JetStream context on Conn.
	JS jetstream.JetStream
	// Replicas is the replication factor of every stream and bucket the
	// hub creates (1..5; 3 in a production cluster).
	Replicas int
	// Prefix namespaces streams, buckets and subjects so that several hubs
	// can share one NATS account: "AMQPHUB" gives buckets such as
	// AMQPHUB_registry and subjects such as amqphub.methods.<...>.
	Prefix string
}

// Bucket returns the name of the hub's stream or key-value bucket for a
// feature ("registry", "twins", "c2d", ...).
func (c *Cluster) Bucket(feature string) string {
	return strings.ToUpper(c.Prefix) + "_" + feature
}

// Subject returns a NATS subject in the hub's namespace, the tokens joined
// with dots. Tokens that come from clients (device ids) must be encoded
// first (see SubjectToken).
func (c *Cluster) Subject(tokens ...string) string {
	return strings.ToLower(c.Prefix) + "." + strings.Join(tokens, ".")
}

// SubjectToken encodes a client-chosen id (device, module, consumer group)
// as one NATS subject token or key-value key token: unpadded base64url,
// whose alphabet is allowed in both and contains no '.', '*' or '>'.
func SubjectToken(id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(id))
}

// IdentityTokens names a device (moduleID "") or module as two subject or
// key tokens, "<device>.<module>", with "_" for no module: tokens cannot be
// empty, and one character is never a base64url encoding, so it cannot be
// a module's token.
func IdentityTokens(deviceID, moduleID string) string {
	m := "_"
	if moduleID != "" {
		m = SubjectToken(moduleID)
	}
	return SubjectToken(deviceID) + "." + m
}
