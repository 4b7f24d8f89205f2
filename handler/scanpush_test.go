package handler

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/hypersync/hypersync/internal/jsonscan"
)

// The 1.0.0 client's bodies take the fast path, and decode as
// encoding/json decodes them.
func TestScanPushDecodesClientBodies(t *testing.T) {
	var changes []map[string]any
	for i := 0; i < 50; i++ {
		changes = append(changes, map[string]any{
			"changeId": fmt.Sprintf("c-%d", i), "shapeKey": "todos", "pushed": 0, "userId": "alice",
			"updatedAt": "2026-11-25T10:00:00.123Z",
			"payload": map[string]any{"todoId": fmt.Sprintf("t%d", i), "title": "Käse <&> \"quoted\"\n\u2028", "done": i%2 == 0,
				"deleted": false, "rank": 1.5e-7 * float64(i), "tags": []any{"a", nil, map[string]any{"b": -3}}, "note": nil},
		})
	}
	body, err := json.Marshal(map[string]any{"changes": changes})
	if err != nil {
		t.Fatal(err)
	}
	items, ok := scanPush(body)
	if !ok || len(items) != 50 {
		t.Fatalf("scanPush: ok=%v, %d changes", ok, len(items))
	}
	checkScanAgrees(t, body)
	if got, _ := items[7].Payload.Get("title"); string(got) != `"Käse \u003c\u0026\u003e \"quoted\"\n\u2028"` {
		t.Errorf("title kept as %s", got)
	}
}

// Payloads are cut from shared blocks of fields; a push with more fields
// than a block, and a payload larger than one, decode whole.
func TestScanPushManyFields(t *testing.T) {
	var b strings.Builder
	b.WriteString(`{"changes":[`)
	for i := 0; i < 120; i++ {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `{"changeId":"c%d","payload":{"todoId":"t%d","a":1,"b":2,"c":3,"d":4,"e":5,"f":6}}`, i, i)
	}
	b.WriteString(`,{"changeId":"wide","payload":{`)
	for i := 0; i < 2000; i++ {
		if i > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, `"f%d":%d`, i, i)
	}
	b.WriteString(`}}]}`)
	body := []byte(b.String())
	items, ok := scanPush(body)
	if !ok || len(items) != 121 || len(items[120].Payload) != 2000 || len(items[119].Payload) != 7 {
		t.Fatalf("scanPush: ok=%v, %d changes", ok, len(items))
	}
	checkScanAgrees(t, body)
}

// Bodies that encoding/json decodes in ways the scanner does not mimic
// take the general path, whose answers the other tests pin down.
func TestScanPushLeavesOddBodiesToTheGeneralPath(t *testing.T) {
	for _, body := range []string{
		`{"changes":[{"changeid":"a"}]}`,                    // matches changeId only case-insensitively
		`{"Changes":[]}`,                                    // likewise
		`{"changes":[{"changeId":"a","changeId":"b"}]}`,     // a repeated field
		`{"changes":[],"changes":[]}`,                       // a repeated envelope
		`{"changes":[{"change\u0049d":"a"}]}`,               // an escaped name
		`{"changes":[{"changeId":1}]}`,                      // a wrong type
		`{"changes":[{"payload":[]}]}`,                      // likewise
		`{"changes":[1]}`,                                   // a change that is not an object
		`{"changes":null}`,                                  // no array
		`{"changes":[{"payload":{"k":01}}]}`,                // invalid JSON
		`{"changes":[{"payload":{"k":"a` + "\x01" + `"}}]}`, // a control character
		`{"changes":[]} x`,                                  // trailing text
		`{}`,                                                // no changes at all
	} {
		if _, ok := scanPush([]byte(body)); ok {
			t.Errorf("scanPush took %s", body)
		}
	}
}

// scanPayloadLevels is how deeply a payload value may nest for scanPush to
// take it: jsonscan.MaxDepth, less the depth at which payload values sit.
const scanPayloadLevels = jsonscan.MaxDepth - payloadDepth

func nestedArrays(levels int) string {
	return strings.Repeat("[", levels) + strings.Repeat("]", levels)
}

// scanPush follows payload values as deep as it may, and leaves deeper
// ones to the general path.
func TestScanPushDepth(t *testing.T) {
	for levels, want := range map[int]bool{scanPayloadLevels: true, scanPayloadLevels + 1: false} {
		body := []byte(`{"changes":[{"changeId":"a","payload":{"todoId":"t","meta":` + nestedArrays(levels) + `}}]}`)
		if _, ok := scanPush(body); ok != want {
			t.Errorf("a payload value %d levels deep: scanPush ok=%v", levels, ok)
		}
		checkScanAgrees(t, body)
	}
}

// clientBody is a push of n changes as the 1.0.0 client encodes them.
func clientBody(n int) []byte {
	var changes []map[string]any
	for i := 0; i < n; i++ {
		changes = append(changes, map[string]any{
			"changeId": fmt.Sprintf("1b4e28ba-2fa1-41d2-883f-%012d", i), "shapeKey": "todos", "pushed": 0, "userId": "alice",
			"updatedAt": "2026-11-25T10:00:00.123Z",
			"payload": map[string]any{"todoId": fmt.Sprintf("t%d", i), "title": fmt.Sprintf("Buy milk and bread for the week %d", i),
				"done": i%2 == 0, "deleted": false},
		})
	}
	body, _ := json.Marshal(map[string]any{"changes": changes})
	return body
}

// BenchmarkScanPush decodes a 300-change push with scanPush and, for
// comparison, with encoding/json into the same types.
func BenchmarkScanPush(b *testing.B) {
	body := clientBody(300)
	b.Run("scanPush", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := scanPush(body); !ok {
				b.Fatal("not scanned")
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		b.ReportAllocs()
		for b.Loop() {
			var typed jsonPush
			if err := json.Unmarshal(body, &typed); err != nil {
				b.Fatal(err)
			}
		}
	})
}
