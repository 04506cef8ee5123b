// Package sas parses, signs and verifies Azure shared access signature
// (SAS) tokens and parses the connection strings that carry SAS keys.
//
// A token looks like
//
//	SharedAccessSignature sr=<resource>&sig=<signature>&se=<expiry>[&skn=<key name>]
//
// The signature is an HMAC-SHA256 over the resource exactly as it appears in
// the token (still URL-encoded), a newline, and the expiry. SDKs disagree on
// how they encode the resource (Node uses a strict encodeURIComponent, the Go
// Event Hubs SDK lower-cases its escapes, some clients send it raw), so
// verification always works on the raw text and never re-encodes.
//
// Two key conventions exist and both are offered explicitly:
// IoT Hub SDKs sign with the base64-DECODED key ([DecodeIoTHubKey]);
// Event Hubs SDKs sign with the bytes of the key STRING ([EventHubsKey]).
package sas

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Prefix is the scheme word that starts every token.
const Prefix = "SharedAccessSignature"

// ErrMalformed is wrapped by every parse error so callers can tell a bad
// token apart from a token that parsed but failed verification.
var ErrMalformed = errors.New("malformed shared access signature")

// ErrSignatureMismatch is returned by Verify when the signature does not
// match the key.
var ErrSignatureMismatch = errors.New("shared access signature does not match the key")

// maxTokenLen bounds the work done on hostile input; real tokens are a few
// hundred bytes.
const maxTokenLen = 8192

// Token is a parsed SAS token. Raw fields keep the text exactly as sent
// because the signature covers that text, not the decoded value.
type Token struct {
	// RawResource is the sr field as sent (usually URL-encoded).
	RawResource string
	// Resource is RawResource URL-decoded once.
	Resource string
	// RawExpiry is the se field as sent.
	RawExpiry string
	// Expiry is se interpreted as Unix seconds.
	Expiry time.Time
	// KeyName is the skn field URL-decoded; empty when skn is absent.
	KeyName string
	// signature is the decoded MAC. It is unexported so that printing a
	// Token (%v, %+v, slog) never reveals it.
	signature []byte
}

// Parse parses a SAS token. The "SharedAccessSignature" prefix is required
// (case-insensitive), fields may come in any order, sr, sig and se are
// required, skn is optional, unknown fields are ignored and duplicate fields
// are rejected. Errors wrap ErrMalformed and never contain the signature.
func Parse(s string) (*Token, error) {
	if len(s) > maxTokenLen {
		return nil, fmt.Errorf("%w: token longer than %d bytes", ErrMalformed, maxTokenLen)
	}
	s = strings.TrimSpace(s)
	if len(s) < len(Prefix) || !strings.EqualFold(s[:len(Prefix)], Prefix) {
		return nil, fmt.Errorf("%w: missing %q prefix", ErrMalformed, Prefix)
	}
	rest := s[len(Prefix):]
	if rest == "" {
		return nil, fmt.Errorf("%w: no fields after %q", ErrMalformed, Prefix)
	}
	body := strings.TrimLeft(rest, " \t")
	if len(body) == len(rest) {
		return nil, fmt.Errorf("%w: expected a space after %q", ErrMalformed, Prefix)
	}

	var t Token
	var rawSig string
	var seen [4]bool // sr, sig, se, skn
	for i, field := range strings.Split(body, "&") {
		name, value, ok := strings.Cut(field, "=")
		if !ok {
			return nil, fmt.Errorf("%w: field %d has no '='", ErrMalformed, i+1)
		}
		var slot int
		switch strings.ToLower(name) {
		case "sr":
			slot = 0
		case "sig":
			slot = 1
		case "se":
			slot = 2
		case "skn":
			slot = 3
		default:
			continue // tolerate fields added by future SDKs
		}
		if seen[slot] {
			return nil, fmt.Errorf("%w: duplicate field %q", ErrMalformed, strings.ToLower(name))
		}
		seen[slot] = true
		if value == "" {
			return nil, fmt.Errorf("%w: field %q is empty", ErrMalformed, strings.ToLower(name))
		}
		switch slot {
		case 0:
			t.RawResource = value
		case 1:
			rawSig = value
		case 2:
			t.RawExpiry = value
		case 3:
			kn, err := url.PathUnescape(value)
			if err != nil {
				return nil, fmt.Errorf("%w: skn is not valid URL encoding", ErrMalformed)
			}
			t.KeyName = kn
		}
	}
	for slot, name := range [...]string{"sr", "sig", "se"} {
		if !seen[slot] {
			return nil, fmt.Errorf("%w: missing field %q", ErrMalformed, name)
		}
	}

	res, err := url.PathUnescape(t.RawResource)
	if err != nil {
		return nil, fmt.Errorf("%w: sr is not valid URL encoding", ErrMalformed)
	}
	t.Resource = res

	exp, err := parseExpiry(t.RawExpiry)
	if err != nil {
		return nil, err
	}
	t.Expiry = exp

	sig, err := decodeSignature(rawSig)
	if err != nil {
		return nil, err
	}
	t.signature = sig
	return &t, nil
}

func parseExpiry(raw string) (time.Time, error) {
	for i := 0; i < len(raw); i++ {
		if raw[i] < '0' || raw[i] > '9' {
			return time.Time{}, fmt.Errorf("%w: se must be decimal Unix seconds, got %q", ErrMalformed, raw)
		}
	}
	n, err := strconv.ParseInt(raw, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: se %q out of range", ErrMalformed, raw)
	}
	return time.Unix(n, 0).UTC(), nil
}

// decodeSignature undoes the URL encoding and base64. PathUnescape is used
// rather than QueryUnescape so that a client that forgot to encode the
// base64 '+' does not have it turned into a space.
func decodeSignature(raw string) ([]byte, error) {
	b64, err := url.PathUnescape(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: sig is not valid URL encoding", ErrMalformed)
	}
	sig, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		sig, err = base64.RawStdEncoding.DecodeString(strings.TrimRight(b64, "="))
	}
	if err != nil {
		return nil, fmt.Errorf("%w: sig is not base64", ErrMalformed)
	}
	if len(sig) != sha256.Size {
		return nil, fmt.Errorf("%w: sig is %d bytes, want %d", ErrMalformed, len(sig), sha256.Size)
	}
	return sig, nil
}

// StringToSign returns the text the signature covers.
func (t *Token) StringToSign() string {
	return t.RawResource + "\n" + t.RawExpiry
}

// Expired reports whether the token is no longer valid at now. A token is
// valid strictly before its expiry second.
func (t *Token) Expired(now time.Time) bool {
	return !now.Before(t.Expiry)
}

// Verify reports whether the token was signed with key, using a
// constant-time comparison. It returns nil or ErrSignatureMismatch.
func (t *Token) Verify(key []byte) error {
	if len(key) == 0 {
		return fmt.Errorf("%w: empty key", ErrSignatureMismatch)
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(t.RawResource))
	mac.Write([]byte{'\n'})
	mac.Write([]byte(t.RawExpiry))
	if !hmac.Equal(mac.Sum(nil), t.signature) {
		return ErrSignatureMismatch
	}
	return nil
}

// String returns the token with its signature redacted, for logs.
func (t *Token) String() string {
	var b strings.Builder
	b.WriteString(Prefix)
	b.WriteString(" sr=")
	b.WriteString(t.RawResource)
	b.WriteString("&sig=REDACTED&se=")
	b.WriteString(t.RawExpiry)
	if t.KeyName != "" {
		b.WriteString("&skn=")
		b.WriteString(EncodeURIComponent(t.KeyName))
	}
	return b.String()
}

// Sign builds a token for resource (NOT encoded; Sign encodes it the way the
// Node SDKs do with their strict encodeURIComponent), signed with key. keyName
// is omitted when empty. The field order (sr, sig, se, skn) and encoding are
// byte-for-byte what azure-iot-common produces for the same inputs.
func Sign(resource string, key []byte, keyName string, expiry time.Time) string {
	return SignEncoded(EncodeURIComponent(resource), key, keyName, expiry)
}

// SignEncoded is Sign for a resource that is already encoded as it must
// appear in the token (for example the raw host name the Node service SDK
// puts in sr, or a lower-cased escape as the Go Event Hubs SDK does).
func SignEncoded(encodedResource string, key []byte, keyName string, expiry time.Time) string {
	se := strconv.FormatInt(expiry.Unix(), 10)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(encodedResource))
	mac.Write([]byte{'\n'})
	mac.Write([]byte(se))
	sig := base64.StdEncoding.EncodeToString(mac.Sum(nil))

	var b strings.Builder
	b.Grow(len(Prefix) + len(encodedResource) + 80 + len(keyName))
	b.WriteString(Prefix)
	b.WriteString(" sr=")
	b.WriteString(encodedResource)
	b.WriteString("&sig=")
	b.WriteString(EncodeURIComponent(sig))
	if keyName != "" {
		b.WriteString("&skn=")
		b.WriteString(EncodeURIComponent(keyName))
	}
	b.WriteString("&se=")
	b.WriteString(se)
	return b.String()
}

// DecodeIoTHubKey returns the HMAC key for an IoT Hub shared access key: the
// base64-decoded bytes. IoT Hub keys are standard base64 with padding.
func DecodeIoTHubKey(b64 string) ([]byte, error) {
	if b64 == "" {
		return nil, errors.New("decode shared access key: key is empty")
	}
	k, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("decode shared access key: not standard base64: %w", err)
	}
	return k, nil
}

// EventHubsKey returns the HMAC key the Event Hubs SDKs use for a shared
// access key: the UTF-8 bytes of the key text, not its base64 decoding.
func EventHubsKey(key string) []byte {
	return []byte(key)
}

// EncodeURIComponent percent-encodes s exactly like the Node SDKs'
// encodeUriComponentStrict: everything except A-Z a-z 0-9 - _ . ~ is
// escaped, UTF-8 bytes with upper-case hex, except that ! ' ( ) * come out
// with LOWER-case hex ("%2a"), a quirk of that helper which matters because
// the signature covers the encoded text.
func EncodeURIComponent(s string) string {
	const upper = "0123456789ABCDEF"
	n := 0
	for i := 0; i < len(s); i++ {
		if !unreserved(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	b := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case unreserved(c):
			b = append(b, c)
		case c == '!' || c == '\'' || c == '(' || c == ')' || c == '*':
			b = append(b, '%')
			b = strconv.AppendInt(b, int64(c), 16)
		default:
			b = append(b, '%', upper[c>>4], upper[c&15])
		}
	}
	return string(b)
}

func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '_' || c == '.' || c == '~'
}
