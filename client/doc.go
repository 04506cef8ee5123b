// Package client is a Go client for Azure IoT Hub and for amqphub, which
// speaks the same AMQP 1.0 dialect: device and service clients over AMQP
// (github.com/Azure/go-amqp) and the service REST API.
//
// # Devices
//
// A DeviceClient is made from a device or module connection string
// (NewDeviceClient), a SAS token (NewDeviceClientFromSAS) or an X.509
// certificate (NewDeviceClientFromX509). It authenticates the way the
// Azure SDKs do, with a CBS put-token on $cbs after SASL ANONYMOUS, and
// renews its token on the open connection before it expires. It sends
// telemetry (SendEvent, SendEventBatch), receives cloud-to-device messages
// (ReceiveC2D or OnC2DMessage, settled with Complete, Abandon or Reject),
// reads and patches its twin (GetTwin, UpdateReported, OnDesiredUpdate)
// and answers direct methods (HandleMethod).
//
// # Services
//
// A ServiceClient is made from a service connection string. It sends
// cloud-to-device messages (SendC2D) and receives their feedback
// (ReceiveFeedback) over AMQP, reads telemetry from every partition
// (NewEventReader) by following the hub's amqp:link:redirect to its
// Event-Hub-compatible endpoint, and manages devices, twins and direct
// methods over REST through its embedded Registry.
//
// # Connections, retries and errors
//
// Clients connect on first use (or Connect) and keep one AMQP connection.
// After a network fault the next call reconnects; calls that fail with a
// retryable error (a lost connection, throttling, a server timeout) are
// retried with exponential backoff as RetryOptions say, until their
// context ends. A call never drops data silently: it returns nil only once
// the hub has accepted the message, and otherwise an error (a retried send
// may reach the hub twice: delivery is at least once). Handlers and
// subscriptions (HandleMethod, OnDesiredUpdate, OnC2DMessage) are restored
// on every new connection.
//
// Errors from the hub match the sentinels of this package with errors.Is
// (ErrUnauthorized, ErrDeviceNotFound, ErrQueueDepthExceeded,
// ErrThrottled, ErrMessageTooLarge, ...) whether they came over AMQP
// (*AMQPError, *CBSError) or REST (*Error).
//
// # Reaching amqphub
//
// The options' TLSConfig trusts amqphub's local CA and Address overrides
// host:port (amqphub in tests listens on random ports; IoT Hub on 5671).
// Every client must be closed; Close stops all its goroutines.
package client
