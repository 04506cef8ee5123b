package sas

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"
)

// testKey is an arbitrary 32-byte key in IoT Hub's base64 form.
const testKey = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="

func mustDecode(t *testing.T, k string) []byte {
	t.Helper()
	b, err := DecodeIoTHubKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// handSign computes the signature independently of the package, as the
// reference for what a correct token contains.
func handSign(key []byte, sr, se string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(sr + "\n" + se))
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

func TestEncodeURIComponent(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", ""},
		{"abcXYZ019-_.~", "abcXYZ019-_.~"},
		{"hub.azure-devices.net/devices/d1", "hub.azure-devices.net%2Fdevices%2Fd1"},
		{"a b+c=d&e", "a%20b%2Bc%3Dd%26e"},
		// encodeURIComponent leaves !'()* alone; the strict variant encodes
		// them with lower-case hex.
		{"!'()*", "%21%27%28%29%2a"},
		{"#$%,:;?@", "%23%24%25%2C%3A%3B%3F%40"},
		{"é€", "%C3%A9%E2%82%AC"},
	}
	for _, tt := range tests {
		if got := EncodeURIComponent(tt.in); got != tt.want {
			t.Errorf("EncodeURIComponent(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestSignMatchesHandComputation(t *testing.T) {
	key := mustDecode(t, testKey)
	exp := time.Unix(1700000000, 0)
	tests := []struct {
		name, resource, keyName, wantSR string
	}{
		{"device", "hub.azure-devices.net/devices/d1", "", "hub.azure-devices.net%2Fdevices%2Fd1"},
		{"policy", "hub.azure-devices.net", "iothubowner", "hub.azure-devices.net"},
		{"module with odd chars", "h.net/devices/a*b/modules/m(1)", "", "h.net%2Fdevices%2Fa%2ab%2Fmodules%2Fm%281%29"},
		{"key name needing escapes", "h.net", "my policy", "h.net"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tok := Sign(tt.resource, key, tt.keyName, exp)
			want := "SharedAccessSignature sr=" + tt.wantSR + "&sig=" + EncodeURIComponent(handSign(key, tt.wantSR, "1700000000"))
			if tt.keyName != "" {
				want += "&skn=" + EncodeURIComponent(tt.keyName)
			}
			want += "&se=1700000000"
			if tok != want {
				t.Fatalf("Sign = %q\nwant   %q", tok, want)
			}
			p, err := Parse(tok)
			if err != nil {
				t.Fatalf("Parse(Sign(...)): %v", err)
			}
			if p.Resource != tt.resource || p.RawResource != tt.wantSR || p.KeyName != tt.keyName {
				t.Fatalf("parsed %+v", p)
			}
			if err := p.Verify(key); err != nil {
				t.Fatalf("Verify: %v", err)
			}
		})
	}
}

func TestParseFields(t *testing.T) {
	key := mustDecode(t, testKey)
	sig := url.QueryEscape(handSign(key, "h%2Fdevices%2Fd", "1700000000"))
	tests := []struct {
		name    string
		in      string
		wantRaw string
		wantRes string
		wantSkn string
	}{
		{"node order", "SharedAccessSignature sr=h%2Fdevices%2Fd&sig=" + sig + "&skn=p&se=1700000000", "h%2Fdevices%2Fd", "h/devices/d", "p"},
		{"csharp order", "SharedAccessSignature sr=h%2Fdevices%2Fd&sig=" + sig + "&se=1700000000&skn=p", "h%2Fdevices%2Fd", "h/devices/d", "p"},
		{"sig first, no skn", "SharedAccessSignature sig=" + sig + "&se=1700000000&sr=h%2Fdevices%2Fd", "h%2Fdevices%2Fd", "h/devices/d", ""},
		{"lower-case escapes", "SharedAccessSignature sr=amqps%3a%2f%2fh%2fe&sig=" + sig + "&se=1700000000&skn=p", "amqps%3a%2f%2fh%2fe", "amqps://h/e", "p"},
		{"raw sr", "SharedAccessSignature sr=h/devices/d&sig=" + sig + "&se=1700000000", "h/devices/d", "h/devices/d", ""},
		{"prefix case and spacing", "  sharedaccesssignature   sr=h&sig=" + sig + "&se=1700000000 ", "h", "h", ""},
		{"unknown field ignored", "SharedAccessSignature sr=h&sig=" + sig + "&se=1700000000&foo=bar", "h", "h", ""},
		{"encoded skn", "SharedAccessSignature sr=h&sig=" + sig + "&se=1700000000&skn=my%20policy", "h", "h", "my policy"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if p.RawResource != tt.wantRaw || p.Resource != tt.wantRes || p.KeyName != tt.wantSkn {
				t.Fatalf("got raw=%q res=%q skn=%q", p.RawResource, p.Resource, p.KeyName)
			}
			if !p.Expiry.Equal(time.Unix(1700000000, 0)) || p.RawExpiry != "1700000000" {
				t.Fatalf("expiry = %v (%q)", p.Expiry, p.RawExpiry)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	const sig = "c2lnbmF0dXJlc2lnbmF0dXJlc2lnbmF0dXJlc2lnbmE%3D" // 32 bytes
	tests := []struct {
		name, in, wantIn string
	}{
		{"empty", "", "prefix"},
		{"no prefix", "sr=h&sig=" + sig + "&se=1", "prefix"},
		{"wrong prefix", "Bearer abc", "prefix"},
		{"no space after prefix", "SharedAccessSignaturesr=h&sig=" + sig + "&se=1", "space"},
		{"prefix only", "SharedAccessSignature ", "no fields"},
		{"missing sr", "SharedAccessSignature sig=" + sig + "&se=1", `"sr"`},
		{"missing sig", "SharedAccessSignature sr=h&se=1", `"sig"`},
		{"missing se", "SharedAccessSignature sr=h&sig=" + sig, `"se"`},
		{"duplicate sr", "SharedAccessSignature sr=h&sr=g&sig=" + sig + "&se=1", "duplicate"},
		{"duplicate skn any case", "SharedAccessSignature sr=h&sig=" + sig + "&se=1&skn=a&SKN=b", "duplicate"},
		{"empty sr", "SharedAccessSignature sr=&sig=" + sig + "&se=1", "empty"},
		{"field without =", "SharedAccessSignature sr=h&sig=" + sig + "&se=1&junk", "no '='"},
		{"empty field", "SharedAccessSignature sr=h&&sig=" + sig + "&se=1", "no '='"},
		{"se not a number", "SharedAccessSignature sr=h&sig=" + sig + "&se=tomorrow", "se"},
		{"se negative", "SharedAccessSignature sr=h&sig=" + sig + "&se=-5", "se"},
		{"se fraction", "SharedAccessSignature sr=h&sig=" + sig + "&se=1.5", "se"},
		{"se overflow", "SharedAccessSignature sr=h&sig=" + sig + "&se=99999999999999999999", "se"},
		{"sig not base64", "SharedAccessSignature sr=h&sig=***&se=1", "base64"},
		{"sig wrong length", "SharedAccessSignature sr=h&sig=YWJj&se=1", "bytes"},
		{"bad escape in sr", "SharedAccessSignature sr=h%zz&sig=" + sig + "&se=1", "sr"},
		{"too long", "SharedAccessSignature sr=" + strings.Repeat("a", maxTokenLen) + "&sig=" + sig + "&se=1", "longer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse(tt.in)
			if err == nil {
				t.Fatalf("Parse succeeded: %+v", p)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), tt.wantIn) {
				t.Fatalf("error %q does not mention %q", err, tt.wantIn)
			}
			if strings.Contains(err.Error(), sig) || strings.Contains(err.Error(), "c2lnbmF0") {
				t.Fatalf("error %q leaks the signature", err)
			}
		})
	}
}

func TestVerify(t *testing.T) {
	key := mustDecode(t, testKey)
	other := mustDecode(t, "b3RoZXJrZXlvdGhlcmtleW90aGVya2V5b3RoZXJrZXk=")
	exp := time.Unix(1700000000, 0)
	good := Sign("h/devices/d", key, "", exp)
	p, err := Parse(good)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Verify(key); err != nil {
		t.Fatalf("Verify(right key) = %v", err)
	}
	if err := p.Verify(other); !errors.Is(err, ErrSignatureMismatch) {
		t.Fatalf("Verify(wrong key) = %v", err)
	}
	if err := p.Verify(nil); !errors.Is(err, ErrSignatureMismatch) {
		t.Fatalf("Verify(nil key) = %v", err)
	}

	// The signature covers sr exactly as sent: re-encoding it differently,
	// or changing se, must break verification.
	tampered := []string{
		strings.Replace(good, "sr=h%2Fdevices%2Fd", "sr=h%2fdevices%2fd", 1),
		strings.Replace(good, "sr=h%2Fdevices%2Fd", "sr=h/devices/d", 1),
		strings.Replace(good, "se=1700000000", "se=1700000001", 1),
		strings.Replace(good, "sr=h%2Fdevices%2Fd", "sr=h%2Fdevices%2Fe", 1),
	}
	for _, tok := range tampered {
		p, err := Parse(tok)
		if err != nil {
			t.Fatalf("Parse(%q): %v", tok, err)
		}
		if err := p.Verify(key); !errors.Is(err, ErrSignatureMismatch) {
			t.Errorf("tampered token %q verified: %v", tok, err)
		}
	}

	// Go Event Hubs style: lower-cased query escape, key string bytes.
	aud := "amqps://Host.example/Hub/ConsumerGroups/$Default/Partitions/0"
	sr := strings.ToLower(url.QueryEscape(aud))
	keyText := "SomeKeyText="
	ehTok := "SharedAccessSignature sr=" + sr + "&sig=" + url.QueryEscape(handSign([]byte(keyText), sr, "1700000000")) + "&se=1700000000&skn=service"
	p, err = Parse(ehTok)
	if err != nil {
		t.Fatal(err)
	}
	if p.Resource != strings.ToLower(aud) {
		t.Fatalf("resource = %q", p.Resource)
	}
	if err := p.Verify(EventHubsKey(keyText)); err != nil {
		t.Fatalf("EH token did not verify with key text: %v", err)
	}
}

func TestExpired(t *testing.T) {
	p, err := Parse(Sign("h", []byte("k"), "", time.Unix(100, 0)))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		now  int64
		want bool
	}{{99, false}, {100, true}, {101, true}}
	for _, tt := range tests {
		if got := p.Expired(time.Unix(tt.now, 0)); got != tt.want {
			t.Errorf("Expired(%d) = %v, want %v", tt.now, got, tt.want)
		}
	}
}

func TestStringRedactsSignature(t *testing.T) {
	key := mustDecode(t, testKey)
	tok := Sign("h/devices/d", key, "pol", time.Unix(1700000000, 0))
	p, err := Parse(tok)
	if err != nil {
		t.Fatal(err)
	}
	_, sigAndRest, _ := strings.Cut(tok, "sig=")
	sig, _, _ := strings.Cut(sigAndRest, "&")
	s := p.String()
	if strings.Contains(s, sig) || !strings.Contains(s, "REDACTED") || !strings.Contains(s, "skn=pol") {
		t.Fatalf("String() = %q", s)
	}
}

func TestDecodeIoTHubKey(t *testing.T) {
	if _, err := DecodeIoTHubKey(""); err == nil {
		t.Error("empty key accepted")
	}
	if _, err := DecodeIoTHubKey("not base64!"); err == nil {
		t.Error("invalid base64 accepted")
	}
	k, err := DecodeIoTHubKey(testKey)
	if err != nil || len(k) != 32 {
		t.Fatalf("DecodeIoTHubKey = %d bytes, %v", len(k), err)
	}
}

func BenchmarkParseVerify(b *testing.B) {
	key, _ := DecodeIoTHubKey(testKey)
	tok := Sign("myhub.azure-devices.net/devices/device-000123", key, "", time.Unix(1700000000, 0))
	b.ReportAllocs()
	for b.Loop() {
		p, err := Parse(tok)
		if err != nil {
			b.Fatal(err)
		}
		if err := p.Verify(key); err != nil {
			b.Fatal(err)
		}
	}
}
