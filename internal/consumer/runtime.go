// Package consumer is the consumer runtime of MessageConsumer pods: it runs inside
// the user's container, wrapping the user's command, consumes one message at a
// time from the instance's mq-http endpoint and runs the command for each message
// (body on stdin, metadata in the environment, exit code 0 acknowledges).
//
// The user's image needs no SDK: an init container copies the operator binary into
// a shared volume (Install), and the container's command becomes
// `<volume>/orderly consume -- <the user's command>` (Main).
package consumer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
	"github.com/orderly-dev/orderly/internal/mqhttp"
)

// Mode says when a consumer's work is done.
type Mode string

const (
	// Drain stops once a poll finds nothing to consume for IdleTimeout.
	Drain Mode = "Drain"
	// Messages stops after MaxMessages messages were handled successfully.
	Messages Mode = "Messages"
	// Forever never stops on its own.
	Forever Mode = "Forever"
)

// Environment the runtime reads; the MessageConsumer controller sets it on the pod.
// The AccessKey pair comes from the Instance's Secret through secretKeyRef, so it
// never appears in the pod spec.
const (
	EnvEndpoint        = "ORDERLY_HTTP_ENDPOINT"
	EnvInstanceID      = "ORDERLY_INSTANCE_ID"
	EnvAccessKeyID     = "ORDERLY_ACCESS_KEY_ID"
	EnvAccessKeySecret = "ORDERLY_ACCESS_KEY_SECRET"
	EnvTopic           = "ORDERLY_TOPIC"
	EnvGroup           = "ORDERLY_GROUP"
	EnvTagFilter       = "ORDERLY_TAG_FILTER"
	EnvOrdered         = "ORDERLY_ORDERED"
	EnvMode            = "ORDERLY_COMPLETION_MODE"
	EnvMaxMessages     = "ORDERLY_MAX_MESSAGES"
	EnvIdleSeconds     = "ORDERLY_IDLE_SECONDS"
	EnvHandlerTimeout  = "ORDERLY_HANDLER_TIMEOUT_SECONDS"
	EnvTerminationLog  = "ORDERLY_TERMINATION_LOG"
	// EnvWorker names this runtime to the broker (the pod's UID, through the
	// downward API): with it, every consume carries the runtime's counts so far,
	// which the controller shows while the pod runs.
	EnvWorker = "ORDERLY_WORKER"
	// EnvCACert holds the PEM of the CA an https endpoint's certificate chains to
	// (the Instance Secret's caCert); empty trusts the system's roots.
	EnvCACert = "ORDERLY_CA_CERT"
)

// Environment the handler sees for each message, besides the pod's own.
const (
	EnvMessageID     = "ORDERLY_MESSAGE_ID"
	EnvMessageTag    = "ORDERLY_MESSAGE_TAG"
	EnvMessageKeys   = "ORDERLY_MESSAGE_KEYS"
	EnvShardingKey   = "ORDERLY_SHARDING_KEY"
	EnvConsumedTimes = "ORDERLY_CONSUMED_TIMES"
	EnvPublishTime   = "ORDERLY_PUBLISH_TIME"
	EnvProperties    = "ORDERLY_MESSAGE_PROPERTIES"
)

// Config is what one runtime consumes and when it stops.
type Config struct {
	Endpoint, InstanceID         string
	AccessKeyID, AccessKeySecret string
	Topic, Group, TagFilter      string
	// Ordered consumes orderly: one message of a queue in flight at a time, across
	// every pod of the group.
	Ordered bool
	Mode    Mode
	// MaxMessages is this runtime's budget in Messages mode.
	MaxMessages int64
	// IdleTimeout is how long an empty poll waits before Drain mode stops (≤ 30 s).
	IdleTimeout time.Duration
	// HandlerTimeout bounds one run of the handler; it is also the message's
	// invisibility window, so a message whose handler failed or whose pod died comes
	// back once it passes.
	HandlerTimeout time.Duration
	// TerminationLog receives the Result as JSON when the runtime stops.
	TerminationLog string
	// CACert is the PEM of the CA to trust for an https endpoint, or empty.
	CACert string
	// Worker, when set, names the runtime in the progress it reports.
	Worker string
}

// Result counts a runtime's messages.
type Result struct {
	// Handled were acknowledged after the handler succeeded.
	Handled int64 `json:"handled"`
	// Failed are handler runs that failed (non-zero exit or timeout); the message is
	// left for redelivery.
	Failed int64 `json:"failed"`
}

// ConfigFromEnv reads the Config the controller put in the environment.
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	cfg := Config{
		Endpoint: getenv(EnvEndpoint), InstanceID: getenv(EnvInstanceID),
		AccessKeyID: getenv(EnvAccessKeyID), AccessKeySecret: getenv(EnvAccessKeySecret),
		Topic: getenv(EnvTopic), Group: getenv(EnvGroup), TagFilter: getenv(EnvTagFilter),
		Ordered: getenv(EnvOrdered) == "true", Mode: Mode(getenv(EnvMode)),
		TerminationLog: getenv(EnvTerminationLog), CACert: getenv(EnvCACert), Worker: getenv(EnvWorker),
		IdleTimeout: 5 * time.Second, HandlerTimeout: 300 * time.Second,
	}
	var errs []error
	for name, v := range map[string]string{EnvEndpoint: cfg.Endpoint, EnvInstanceID: cfg.InstanceID, EnvAccessKeyID: cfg.AccessKeyID,
		EnvAccessKeySecret: cfg.AccessKeySecret, EnvTopic: cfg.Topic, EnvGroup: cfg.Group} {
		if v == "" {
			errs = append(errs, fmt.Errorf("%s is not set", name))
		}
	}
	switch cfg.Mode {
	case "":
		cfg.Mode = Drain
	case Drain, Forever:
	case Messages:
		n, err := strconv.ParseInt(getenv(EnvMaxMessages), 10, 64)
		if err != nil || n < 1 {
			errs = append(errs, fmt.Errorf("%s must be a positive number in Messages mode", EnvMaxMessages))
		}
		cfg.MaxMessages = n
	default:
		errs = append(errs, fmt.Errorf("%s %q is not Drain, Messages or Forever", EnvMode, cfg.Mode))
	}
	for name, d := range map[string]*time.Duration{EnvIdleSeconds: &cfg.IdleTimeout, EnvHandlerTimeout: &cfg.HandlerTimeout} {
		if v := getenv(name); v != "" {
			s, err := strconv.Atoi(v)
			if err != nil || s < 1 {
				errs = append(errs, fmt.Errorf("%s must be a positive number of seconds", name))
				continue
			}
			*d = time.Duration(s) * time.Second
		}
	}
	cfg.IdleTimeout = min(cfg.IdleTimeout, 30*time.Second)
	return cfg, errors.Join(errs...)
}

// Runtime consumes and runs the handler.
type Runtime struct {
	Config  Config
	Command []string
	// Stdout and Stderr receive the handler's output and the runtime's log lines.
	Stdout, Stderr io.Writer
	// RetryDelay is the pause after a failed request before the next; default 1 s.
	RetryDelay time.Duration

	client *mqhttp.Client
}

// Run consumes until the Config's mode says the work is done or ctx ends. The
// message in hand when ctx ends is finished (handled and acknowledged) first:
// that is what makes a rollover or a deletion graceful. An error means the
// runtime cannot go on (bad credentials, unknown topic or group); handler
// failures are counted, not returned.
func (r *Runtime) Run(ctx context.Context) (Result, error) {
	var res Result
	if len(r.Command) == 0 {
		return res, errors.New("no handler command")
	}
	hc, err := mqhttp.NewHTTPClient([]byte(r.Config.CACert), 40*time.Second)
	if err != nil {
		return res, fmt.Errorf("%s: %w", EnvCACert, err)
	}
	r.client = &mqhttp.Client{Endpoint: r.Config.Endpoint, AccessKeyID: r.Config.AccessKeyID,
		AccessKeySecret: r.Config.AccessKeySecret, InstanceID: r.Config.InstanceID, HTTP: hc}
	retry := r.RetryDelay
	if retry <= 0 {
		retry = time.Second
	}
	wait := 30 * time.Second
	if r.Config.Mode == Drain {
		wait = r.Config.IdleTimeout
	}
	for ctx.Err() == nil {
		if r.Config.Mode == Messages && res.Handled >= r.Config.MaxMessages {
			return res, nil
		}
		var progress *broker.WorkerProgress
		if r.Config.Worker != "" {
			progress = &broker.WorkerProgress{Worker: r.Config.Worker, Handled: res.Handled, Failed: res.Failed}
		}
		msgs, err := r.client.Consume(ctx, mqhttp.ConsumeRequest{
			Topic: r.Config.Topic, Group: r.Config.Group, Tag: r.Config.TagFilter, Orderly: r.Config.Ordered,
			Max: 1, Wait: wait, Invisible: r.Config.HandlerTimeout, Progress: progress,
		})
		switch {
		case mqhttp.IsCode(err, "MessageNotExist"):
			if r.Config.Mode == Drain {
				r.logf("nothing to consume for %s: drained", r.Config.IdleTimeout)
				return res, nil
			}
			continue
		case fatal(err):
			return res, fmt.Errorf("cannot consume %s as %s: %w", r.Config.Topic, r.Config.Group, err)
		case err != nil:
			if ctx.Err() != nil {
				return res, nil
			}
			r.logf("consume failed, retrying: %v", err)
			select {
			case <-ctx.Done():
			case <-time.After(retry):
			}
			continue
		}
		for i := range msgs {
			// The message in hand is finished even if ctx ends meanwhile.
			if r.handle(&msgs[i]) {
				if err := r.ack(&msgs[i]); err != nil {
					// Not acknowledged: it comes back and is handled again, as
					// at-least-once delivery allows.
					r.logf("ack of %s failed: %v", msgs[i].ID, err)
					continue
				}
				res.Handled++
			} else {
				res.Failed++
			}
		}
	}
	return res, nil
}

// fatal reports errors that retrying cannot fix: refusals of the credentials or
// the names, and an endpoint whose certificate cannot be trusted.
func fatal(err error) bool {
	var e *mqhttp.APIError
	var unknownCA x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	var hostname x509.HostnameError
	var record tls.RecordHeaderError // plain HTTP answering a TLS client
	return (errors.As(err, &e) && (e.Status == http.StatusForbidden || e.Status == http.StatusBadRequest ||
		e.Code == "TopicNotExist" || e.Code == "SubscriptionNotExist")) ||
		errors.As(err, &unknownCA) || errors.As(err, &invalid) || errors.As(err, &hostname) || errors.As(err, &record)
}

// handle runs the handler for m and reports whether it succeeded.
func (r *Runtime) handle(m *mqhttp.ConsumedMessage) bool {
	ctx, cancel := context.WithTimeout(context.Background(), r.Config.HandlerTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, r.Command[0], r.Command[1:]...)
	cmd.Stdin = strings.NewReader(m.Body)
	cmd.Stdout, cmd.Stderr = r.Stdout, r.Stderr
	props, _ := json.Marshal(m.Properties())
	cmd.Env = append(os.Environ(),
		EnvMessageID+"="+m.ID,
		EnvMessageTag+"="+m.Tag,
		EnvMessageKeys+"="+strings.Join(m.Keys(), " "),
		EnvShardingKey+"="+m.ShardingKey(),
		EnvConsumedTimes+"="+strconv.Itoa(m.ConsumedTimes),
		EnvPublishTime+"="+strconv.FormatInt(m.PublishTime, 10),
		EnvProperties+"="+string(props),
	)
	// The handler and anything it starts are one process group, killed together
	// when the timeout passes.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	switch {
	case err == nil:
		return true
	case ctx.Err() != nil:
		r.logf("handler for %s timed out after %s", m.ID, r.Config.HandlerTimeout)
	default:
		r.logf("handler for %s failed: %v", m.ID, err)
	}
	return false
}

func (r *Runtime) ack(m *mqhttp.ConsumedMessage) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return r.client.Ack(ctx, r.Config.Topic, r.Config.Group, []string{m.Handle})
}

func (r *Runtime) logf(format string, args ...any) {
	if r.Stderr != nil {
		fmt.Fprintf(r.Stderr, "orderly consume: "+format+"\n", args...)
	}
}

// Main is `orderly consume -- command [args...]`: it reads its Config from the
// environment, stops gracefully on SIGTERM or SIGINT, writes its Result to the
// termination log, and returns the process exit code.
func Main(args []string) int {
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	cfg, err := ConfigFromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintf(os.Stderr, "orderly consume: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	rt := &Runtime{Config: cfg, Command: args, Stdout: os.Stdout, Stderr: os.Stderr}
	res, err := rt.Run(ctx)
	if cfg.TerminationLog != "" {
		out, _ := json.Marshal(res)
		if werr := os.WriteFile(cfg.TerminationLog, out, 0o644); werr != nil {
			rt.logf("cannot write the termination log: %v", werr)
		}
	}
	rt.logf("stopped: %d handled, %d failed", res.Handled, res.Failed)
	if err != nil {
		rt.logf("%v", err)
		return 1
	}
	return 0
}

// Install copies the running binary to dest, executable: the init container's
// job, which puts the runtime into a volume the user's container mounts.
func Install(dest string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	in, err := os.Open(self)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dest, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
