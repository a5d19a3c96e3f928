package control

import (
	"encoding/json"
	"reflect"
	"testing"
)

// requestKinds are the bodies the server decodes, by the fuzzer's kind byte.
var requestKinds = []func() any{
	func() any { return &Upstream{} },
	func() any { return &PoolSpec{} },
	func() any { return &PoolPatch{} },
	func() any { return &HostSpec{Weight: DefaultWeight} },
	func() any { return &HostPatch{} },
	func() any { return &struct{}{} }, // actions, deletes, reload, reset
}

// FuzzDecodeRequest feeds bytes to the request decoder and validator. It
// must not panic, and what it accepts must survive a marshal/decode round
// trip unchanged and still be valid. Seeds live in testdata/fuzz.
func FuzzDecodeRequest(f *testing.F) {
	f.Add(uint8(3), []byte(`{"address":"10.0.0.3:6379","weight":5}`)) // a good host
	f.Add(uint8(3), []byte(`{"address":"10.0.0.3:6379","wei`))        // truncated
	f.Add(uint8(3), []byte("{\"address\":\"\xff\"}"))                 // invalid UTF-8
	f.Add(uint8(4), []byte(`{"weight":-1}`))                          // negative weight
	f.Add(uint8(0), []byte(`{"pools":[{"name":"a","hosts":[{"address":"unix:/x.sock"}]}]}`))
	f.Fuzz(func(t *testing.T, kind uint8, body []byte) {
		mk := requestKinds[int(kind)%len(requestKinds)]
		v := mk()
		if decodeBody(body, v, true) != nil {
			return
		}
		if u, ok := v.(*Upstream); ok && u.Name == "" {
			u.Name = "fuzz" // the server takes it from the path
		}
		if val, ok := v.(interface{ Validate() error }); ok && val.Validate() != nil {
			return
		}
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatalf("marshal accepted %T: %v", v, err)
		}
		w := mk()
		if err := decodeBody(b, w, true); err != nil {
			t.Fatalf("re-decode of %s: %v", b, err)
		}
		if !reflect.DeepEqual(v, w) {
			t.Fatalf("round trip changed %#v into %#v", v, w)
		}
		if val, ok := w.(interface{ Validate() error }); ok {
			if err := val.Validate(); err != nil {
				t.Fatalf("re-decoded %s invalid: %v", b, err)
			}
		}
	})
}
