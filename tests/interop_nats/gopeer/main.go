// Command gopeer is a Loom NATS RPC peer on nats.go, for hare_py's interop
// tests: the envelopes and calls are Loom's (loom.rpc.{svc}.{inst}.{method},
// Request {method, caller_id, payload, trace_id}, Response {ok, payload,
// error}), decoded with Go structs as Loom's own rpc package does.
//
//	gopeer serve -url U -svc S -inst I
//	    answers loom.rpc.S.I.{task.assign,task.fail,task.nothing}, prints
//	    "ready" once subscribed, drains and exits on SIGTERM;
//	gopeer call -url U -subject SUBJ -method M [-caller C] [-timeout D] PAYLOAD...
//	    sends one request per PAYLOAD (raw JSON, "null" for nil), all at once,
//	    and prints one JSON line per call as its answer comes.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
)

// Request is Loom's request envelope; its caller leaves TraceID empty.
type Request struct {
	Method   string          `json:"method"`
	CallerID string          `json:"caller_id"`
	Payload  json.RawMessage `json:"payload,omitempty"`
	TraceID  string          `json:"trace_id,omitempty"`
}

// Response is Loom's response envelope.
type Response struct {
	OK      bool            `json:"ok"`
	Payload json.RawMessage `json:"payload,omitempty"`
	Error   string          `json:"error,omitempty"`
}

func ok(v any) *Response {
	data, err := json.Marshal(v)
	if err != nil {
		return fail(err.Error())
	}
	return &Response{OK: true, Payload: data}
}

func fail(text string) *Response { return &Response{OK: false, Error: text} }

func main() {
	if len(os.Args) < 2 {
		die(errors.New("usage: gopeer serve|call [flags]"))
	}
	switch os.Args[1] {
	case "serve":
		serve(os.Args[2:])
	case "call":
		call(os.Args[2:])
	default:
		die(fmt.Errorf("unknown mode %q (serve or call)", os.Args[1]))
	}
}

func die(err error) {
	fmt.Fprintln(os.Stderr, "gopeer:", err)
	os.Exit(2)
}

// serve is a Loom handler for one instance, one subscription per method as
// Loom's rpc.Register makes them.
func serve(args []string) {
	flags := flag.NewFlagSet("serve", flag.ExitOnError)
	url := flags.String("url", nats.DefaultURL, "nats-server URL")
	svc := flags.String("svc", "", "service type")
	inst := flags.String("inst", "", "instance id")
	_ = flags.Parse(args)

	nc, err := nats.Connect(*url, nats.Name("gopeer-serve"))
	if err != nil {
		die(err)
	}
	handlers := map[string]func(*Request) *Response{
		"task.assign": func(req *Request) *Response {
			return ok(map[string]any{
				"got": req.Payload, "by": *inst, "method": req.Method,
				"caller_id": req.CallerID, "trace_id": req.TraceID,
			})
		},
		"task.fail": func(req *Request) *Response {
			return fail(fmt.Sprintf("go handler refused %s", req.Payload))
		},
		"task.nothing": func(req *Request) *Response { return &Response{OK: true} },
	}
	for method, handle := range handlers {
		handle := handle
		subject := fmt.Sprintf("loom.rpc.%s.%s.%s", *svc, *inst, method)
		_, err := nc.Subscribe(subject, func(msg *nats.Msg) {
			var req Request
			resp := fail("bad request envelope")
			if json.Unmarshal(msg.Data, &req) == nil {
				resp = handle(&req)
			}
			data, _ := json.Marshal(resp)
			_ = msg.Respond(data)
		})
		if err != nil {
			die(err)
		}
	}
	if err := nc.Flush(); err != nil {
		die(err)
	}
	fmt.Println("ready")

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	_ = nc.Drain()
	for nc.IsDraining() {
		time.Sleep(10 * time.Millisecond)
	}
}

// outcome is one call's line of output: Loom's answer, or nats.go's error
// (no responders, timeout) as fault.
type outcome struct {
	N       int             `json:"n"`
	Sent    json.RawMessage `json:"sent"`
	OK      bool            `json:"ok"`
	Payload json.RawMessage `json:"payload"`
	Error   string          `json:"error"`
	Fault   string          `json:"fault,omitempty"`
}

// call is Loom's caller: nc.Request with the envelope, one goroutine per call.
func call(args []string) {
	flags := flag.NewFlagSet("call", flag.ExitOnError)
	url := flags.String("url", nats.DefaultURL, "nats-server URL")
	subject := flags.String("subject", "", "request subject")
	method := flags.String("method", "", "method named in the envelope")
	caller := flags.String("caller", "go-caller", "caller id")
	timeout := flags.Duration("timeout", 5*time.Second, "timeout of each call")
	_ = flags.Parse(args)

	nc, err := nats.Connect(*url, nats.Name("gopeer-call"))
	if err != nil {
		die(err)
	}
	defer nc.Close()
	var out sync.Mutex
	encoder := json.NewEncoder(os.Stdout)
	var calls sync.WaitGroup
	for n, payload := range flags.Args() {
		if !json.Valid([]byte(payload)) {
			die(fmt.Errorf("payload %d is not JSON: %q", n, payload))
		}
		calls.Add(1)
		go func(n int, payload json.RawMessage) {
			defer calls.Done()
			result := outcome{N: n, Sent: payload}
			data, _ := json.Marshal(Request{Method: *method, CallerID: *caller, Payload: payload})
			msg, err := nc.Request(*subject, data, *timeout)
			var resp Response
			if err == nil {
				err = json.Unmarshal(msg.Data, &resp)
			}
			if err != nil {
				result.Fault = err.Error()
			} else {
				result.OK, result.Payload, result.Error = resp.OK, resp.Payload, resp.Error
			}
			out.Lock()
			defer out.Unlock()
			_ = encoder.Encode(result)
		}(n, json.RawMessage(payload))
	}
	calls.Wait()
}
