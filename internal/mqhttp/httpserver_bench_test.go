package mqhttp

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/fasthttp"
)

// BenchmarkHTTPServers measures what an HTTP/1.1 server costs per request by itself,
// to choose the endpoint's server by a measurement (issue: faster than RabbitMQ).
// Each server does the least the endpoint's publish does apart from its own work:
// read a request with the SDK's headers and a 1 KiB body, and answer 201 with a
// SendMessageResponse-sized XML body and the endpoint's headers. The load is the
// publish benchmark's: 64 keep-alive connections of the lean client, each waiting
// for its answer. The client is the same for each server, so the difference in
// CPU per request is the servers'.
func BenchmarkHTTPServers(b *testing.B) {
	answer := []byte(`<?xml version="1.0" encoding="UTF-8"?>` + "\n" +
		`<Message xmlns="http://mq.aliyuncs.com/doc/v1/"><MessageId>0A0B0C0D00002A9F00000000000F4240</MessageId>` +
		`<MessageBodyMD5>0CC175B9C0F1B6A831C399E269772661</MessageBodyMD5></Message>`)
	b.Run("net-http", func(b *testing.B) {
		srv := &http.Server{
			Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
				if err != nil || len(body) == 0 || r.Header.Get("Authorization") == "" {
					w.WriteHeader(http.StatusBadRequest)
					return
				}
				h := w.Header()
				h["Content-Type"] = []string{"text/xml;charset=utf-8"}
				h["X-Mq-Version"] = []string{"2015-06-06"}
				h["Content-Length"] = []string{strconv.Itoa(len(answer))}
				w.WriteHeader(http.StatusCreated)
				_, _ = w.Write(answer)
			}),
			ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute, MaxHeaderBytes: 16 << 10,
		}
		benchHTTPServer(b, srv.Serve, func() { _ = srv.Shutdown(context.Background()) })
	})
	b.Run("fasthttp", func(b *testing.B) {
		srv := &fasthttp.Server{
			Handler: func(ctx *fasthttp.RequestCtx) {
				if len(ctx.PostBody()) == 0 || len(ctx.Request.Header.Peek("Authorization")) == 0 {
					ctx.SetStatusCode(http.StatusBadRequest)
					return
				}
				ctx.Response.Header.SetContentType("text/xml;charset=utf-8")
				ctx.Response.Header.Set("X-Mq-Version", "2015-06-06")
				ctx.SetStatusCode(http.StatusCreated)
				ctx.SetBody(answer)
			},
			ReadTimeout: 10 * time.Second, IdleTimeout: time.Minute, MaxRequestBodySize: 1 << 20,
			ReadBufferSize: 16 << 10, NoDefaultServerHeader: true,
		}
		benchHTTPServer(b, srv.Serve, func() { _ = srv.Shutdown() })
	})
}

// benchHTTPServer serves with serve on loopback and drives it with benchClients
// lean connections, each sending signed publishes of a 1 KiB body in turn.
func benchHTTPServer(b *testing.B, serve func(net.Listener) error, stop func()) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	asServer(func() {
		go func() {
			defer close(done)
			_ = serve(ln)
		}()
	})
	defer func() { stop(); <-done }()
	conns := make([]*loadConn, benchClients)
	for i := range conns {
		if conns[i], err = dialLoad(ln.Addr().String()); err != nil {
			b.Fatal(err)
		}
		defer conns[i].close()
	}
	body := []byte(benchBody)
	target := "/topics/bench/messages?ns=" + testInstance
	var next atomic.Int64
	b.SetBytes(int64(len(body)))
	b.ResetTimer()
	start, cpu := time.Now(), processCPU()
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				status, _, err := c.do(http.MethodPost, target, body)
				if err != nil || status != http.StatusCreated {
					b.Errorf("publish: %d %v", status, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
	reportCPU(b, cpu, b.N)
}
