package hub

import (
	"net/url"
	"strings"
)

// Kind is the kind of node a link address names.
type Kind int

// Address kinds. Device kinds carry DeviceID (and ModuleID for modules).
const (
	KindUnknown Kind = iota
	// KindCBS is the $cbs claims-based-security node.
	KindCBS
	// KindDeviceEvents is /devices/{id}[/modules/{mid}]/messages/events (device → hub).
	KindDeviceEvents
	// KindDeviceBound is /devices/{id}[/modules/{mid}]/messages/devicebound (hub → device).
	KindDeviceBound
	// KindTwin is /devices/{id}[/modules/{mid}]/twin.
	KindTwin
	// KindMethods is /devices/{id}[/modules/{mid}]/methods/devicebound.
	KindMethods
	// KindServiceC2D is /messages/devicebound (service → hub).
	KindServiceC2D
	// KindFeedback is /messages/serviceBound/feedback (hub → service).
	KindFeedback
	// KindFileNotifications is /messages/serviceBound/filenotifications.
	KindFileNotifications
	// KindEventsRedirect is /messages/events/ConsumerGroups/{cg}/Partitions/{p}
	// or /messages/events/$management on the hub: answered with a redirect.
	KindEventsRedirect
	// KindEHManagement is {entity}/$management on the Event-Hub-compatible endpoint.
	KindEHManagement
	// KindEHPartition is {entity}/ConsumerGroups/{cg}/Partitions/{p}.
	KindEHPartition
	// KindEHSend is {entity} or {entity}/Partitions/{p} (producers).
	KindEHSend
)

var kindNames = map[Kind]string{
	KindUnknown: "unknown", KindCBS: "cbs", KindDeviceEvents: "device-events",
	KindDeviceBound: "device-bound", KindTwin: "twin", KindMethods: "methods",
	KindServiceC2D: "service-c2d", KindFeedback: "feedback", KindFileNotifications: "file-notifications",
	KindEventsRedirect: "events-redirect", KindEHManagement: "eventhub-management",
	KindEHPartition: "eventhub-partition", KindEHSend: "eventhub-send",
}

func (k Kind) String() string { return kindNames[k] }

// IsDevice reports whether the kind is a device-facing address.
func (k Kind) IsDevice() bool {
	return k == KindDeviceEvents || k == KindDeviceBound || k == KindTwin || k == KindMethods
}

// Route is a parsed link address.
type Route struct {
	Kind          Kind
	DeviceID      string
	ModuleID      string
	ConsumerGroup string
	Partition     string
	// Management marks /messages/events/$management (KindEventsRedirect).
	Management bool
	// Entity is the Event Hub name for the KindEH* kinds.
	Entity string
	// Path is the address path with a leading slash, ids decoded; tokens
	// are checked against it (auth.Identity.Covers).
	Path string
}

// ParseAddress parses a link address as IoT Hub does: an optional
// amqps://host[:port] prefix is ignored, literal segments match without
// regard to case, ids are URL-decoded. entity is the Event-Hub-compatible
// entity name. An unknown address gives KindUnknown.
func ParseAddress(addr, entity string) Route {
	path := stripScheme(addr)
	if path == "$cbs" || path == "/$cbs" {
		return Route{Kind: KindCBS, Path: "/$cbs"}
	}
	if path == "$management" || path == "/$management" {
		return bareManagementRoute(entity)
	}
	trimmed := strings.Trim(path, "/")
	if trimmed == "" {
		return Route{}
	}
	raw := strings.Split(trimmed, "/")
	seg := make([]string, len(raw))
	for i, s := range raw {
		// Some SDKs percent-encode ids, the Node device SDK does not, and
		// '%' is a legal id character: a segment that is not a valid
		// escape sequence is taken literally.
		d, err := url.PathUnescape(s)
		if err != nil {
			d = s
		}
		seg[i] = d
	}
	r := Route{Path: "/" + strings.Join(seg, "/")}
	eq := strings.EqualFold
	n := len(seg)
	switch {
	case eq(seg[0], "devices") && n >= 3:
		r.DeviceID = seg[1]
		rest := seg[2:]
		if len(rest) >= 3 && eq(rest[0], "modules") {
			r.ModuleID = rest[1]
			rest = rest[2:]
		}
		switch {
		case len(rest) == 2 && eq(rest[0], "messages") && eq(rest[1], "events"):
			r.Kind = KindDeviceEvents
		case len(rest) == 2 && eq(rest[0], "messages") && eq(rest[1], "devicebound"):
			r.Kind = KindDeviceBound
		case len(rest) == 1 && eq(rest[0], "twin"):
			r.Kind = KindTwin
		case len(rest) == 2 && eq(rest[0], "methods") && eq(rest[1], "devicebound"):
			r.Kind = KindMethods
		}
		if r.DeviceID == "" || r.Kind == KindUnknown {
			return Route{}
		}
	case n == 2 && eq(seg[0], "messages") && eq(seg[1], "devicebound"):
		r.Kind = KindServiceC2D
	case n == 3 && eq(seg[0], "messages") && eq(seg[1], "servicebound") && eq(seg[2], "feedback"):
		r.Kind = KindFeedback
	case n == 3 && eq(seg[0], "messages") && eq(seg[1], "servicebound") && eq(seg[2], "filenotifications"):
		r.Kind = KindFileNotifications
	case n == 6 && eq(seg[0], "messages") && eq(seg[1], "events") && eq(seg[2], "consumergroups") && eq(seg[4], "partitions"):
		r.Kind, r.ConsumerGroup, r.Partition = KindEventsRedirect, seg[3], seg[5]
	case n == 3 && eq(seg[0], "messages") && eq(seg[1], "events") && seg[2] == "$management":
		r.Kind, r.Management = KindEventsRedirect, true
	case entity != "" && eq(seg[0], entity):
		r.Entity = seg[0]
		switch {
		case n == 2 && seg[1] == "$management":
			r.Kind = KindEHManagement
		case n == 5 && eq(seg[1], "consumergroups") && eq(seg[3], "partitions"):
			r.Kind, r.ConsumerGroup, r.Partition = KindEHPartition, seg[2], seg[4]
		case n == 1:
			r.Kind = KindEHSend
		case n == 3 && eq(seg[1], "partitions"):
			r.Kind, r.Partition = KindEHSend, seg[2]
		default:
			return Route{}
		}
	default:
		return Route{}
	}
	return r
}

// stripScheme drops "amqps://host[:port]" (any scheme) and returns the path.
func stripScheme(addr string) string {
	i := strings.Index(addr, "://")
	if i < 0 {
		return addr
	}
	rest := addr[i+3:]
	j := strings.IndexByte(rest, '/')
	if j < 0 {
		return "/"
	}
	return rest[j:]
}

// bareManagementRoute routes the bare "$management" address, which the Go
// and Node Event Hubs SDKs attach to (their CBS claim names
// {entity}/$management), to the Event-Hub-compatible entity's node.
func bareManagementRoute(entity string) Route {
	if entity == "" {
		return Route{}
	}
	return Route{Kind: KindEHManagement, Entity: entity, Path: "/" + entity + "/$management"}
}
