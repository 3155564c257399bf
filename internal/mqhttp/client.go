package mqhttp

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/orderly-dev/orderly/internal/broker"
)

// InvisibleSecondsHeader is an Orderly extension of consume requests: the
// invisibility window, in seconds, of the messages handed out (1 to 43200). The
// public SDKs never send it and get the protocol's default; Orderly's consumer
// runtime sends its handler timeout, so that a failed message comes back when the
// handler's deadline would have passed rather than after the fixed default.
const InvisibleSecondsHeader = "X-Orderly-Invisible-Seconds"

// ProgressHeader is an Orderly extension of consume requests: the calling
// worker's progress report, "<worker> <handled> <failed>" (see
// broker.WorkerProgress). The consumer runtime of MessageConsumer pods sends it
// with every consume, so that the controller can show counts that move while the
// pods run. The public SDKs never send it.
const ProgressHeader = "X-Orderly-Worker-Progress"

// FormatProgress is the ProgressHeader value of p.
func FormatProgress(p broker.WorkerProgress) string {
	return p.Worker + " " + strconv.FormatInt(p.Handled, 10) + " " + strconv.FormatInt(p.Failed, 10)
}

// parseProgress reads a ProgressHeader value; the broker checks the worker name.
func parseProgress(v string) (*broker.WorkerProgress, bool) {
	f := strings.Split(v, " ")
	if len(f) != 3 {
		return nil, false
	}
	handled, err1 := strconv.ParseInt(f[1], 10, 64)
	failed, err2 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil {
		return nil, false
	}
	return &broker.WorkerProgress{Worker: f[0], Handled: handled, Failed: failed}, true
}

// maxInvisible bounds InvisibleSecondsHeader: 12 hours, as RocketMQ 5 bounds
// ChangeInvisibleDuration.
const maxInvisible = 12 * time.Hour

// NewHTTPClient returns an HTTP client for the endpoint that trusts the CA in
// caPEM (an Instance Secret's caCert) and no other, or the system's roots
// when caPEM is empty.
func NewHTTPClient(caPEM []byte, timeout time.Duration) (*http.Client, error) {
	hc := &http.Client{Timeout: timeout}
	if len(caPEM) == 0 {
		return hc, nil
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("the CA holds no PEM certificate")
	}
	hc.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}
	return hc, nil
}

// Client is a small mq-http client: what Orderly's own consumer runtime needs,
// signed as the SDKs sign. Applications use the public SDKs.
type Client struct {
	Endpoint        string // http://host:port
	AccessKeyID     string
	AccessKeySecret string
	InstanceID      string
	HTTP            *http.Client
}

// ConsumedMessage is one message of a consume response.
type ConsumedMessage struct {
	ID               string `xml:"MessageId"`
	Handle           string `xml:"ReceiptHandle"`
	Body             string `xml:"MessageBody"`
	BodyMD5          string `xml:"MessageBodyMD5"`
	Tag              string `xml:"MessageTag"`
	PublishTime      int64  `xml:"PublishTime"`
	FirstConsumeTime int64  `xml:"FirstConsumeTime"`
	NextConsumeTime  int64  `xml:"NextConsumeTime"`
	ConsumedTimes    int    `xml:"ConsumedTimes"`
	RawProperties    string `xml:"Properties"`
}

// Properties are the message's user properties, the reserved ones excluded.
func (m *ConsumedMessage) Properties() map[string]string {
	props := parseProperties(m.RawProperties)
	for _, reserved := range []string{propKeys, propShardingKey, propStartDeliver, propTransCheckTime} {
		delete(props, reserved)
	}
	return props
}

// Keys are the message's keys.
func (m *ConsumedMessage) Keys() []string {
	return strings.Fields(parseProperties(m.RawProperties)[propKeys])
}

// ShardingKey is the message's sharding key, empty for unordered messages.
func (m *ConsumedMessage) ShardingKey() string {
	return parseProperties(m.RawProperties)[propShardingKey]
}

// APIError is an error answer of the endpoint.
type APIError struct {
	Status  int
	Code    string `xml:"Code"`
	Message string `xml:"Message"`
}

func (e *APIError) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message) }

// IsCode reports whether err is an APIError with the given code.
func IsCode(err error, code string) bool {
	var e *APIError
	return errors.As(err, &e) && e.Code == code
}

// ConsumeRequest asks for messages.
type ConsumeRequest struct {
	Topic, Group, Tag string
	Orderly           bool
	Max               int
	Wait              time.Duration
	// Invisible, when set, is sent as InvisibleSecondsHeader.
	Invisible time.Duration
	// Progress, when set, is sent as ProgressHeader.
	Progress *broker.WorkerProgress
}

// Consume pops messages. No message is the APIError MessageNotExist, as the
// endpoint answers.
func (c *Client) Consume(ctx context.Context, req ConsumeRequest) ([]ConsumedMessage, error) {
	q := url.Values{}
	q.Set("consumer", req.Group)
	q.Set("numOfMessages", strconv.Itoa(req.Max))
	q.Set("waitseconds", strconv.Itoa(int(req.Wait/time.Second)))
	q.Set("ns", c.InstanceID)
	if req.Tag != "" {
		q.Set("tag", req.Tag)
	}
	if req.Orderly {
		q.Set("trans", "order")
	}
	header := http.Header{}
	if req.Invisible > 0 {
		header.Set(InvisibleSecondsHeader, strconv.Itoa(int(req.Invisible/time.Second)))
	}
	if req.Progress != nil {
		header.Set(ProgressHeader, FormatProgress(*req.Progress))
	}
	status, body, err := c.Do(ctx, http.MethodGet, "/topics/"+url.PathEscape(req.Topic)+"/messages?"+q.Encode(), nil, header)
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, apiError(status, body)
	}
	var out struct {
		Messages []ConsumedMessage `xml:"Message"`
	}
	if err := xml.Unmarshal(body, &out); err != nil {
		return nil, fmt.Errorf("malformed consume response: %w", err)
	}
	return out.Messages, nil
}

// Ack acknowledges handles; a handle the endpoint refused is reported as an error.
func (c *Client) Ack(ctx context.Context, topic, group string, handles []string) error {
	var b bytes.Buffer
	b.WriteString(xmlHeader + `<ReceiptHandles xmlns="` + xmlNamespace + `">`)
	for _, h := range handles {
		b.WriteString("<ReceiptHandle>")
		_ = xml.EscapeText(&b, []byte(h))
		b.WriteString("</ReceiptHandle>")
	}
	b.WriteString("</ReceiptHandles>")
	q := url.Values{}
	q.Set("consumer", group)
	q.Set("ns", c.InstanceID)
	status, body, err := c.Do(ctx, http.MethodDelete, "/topics/"+url.PathEscape(topic)+"/messages?"+q.Encode(), b.Bytes(), nil)
	if err != nil {
		return err
	}
	if status != http.StatusNoContent {
		return apiError(status, body)
	}
	return nil
}

// Publish publishes one message with a tag and sharding key (either may be empty).
func (c *Client) Publish(ctx context.Context, topic, body, tag, shardingKey string) (id string, err error) {
	var b bytes.Buffer
	b.WriteString(xmlHeader + `<Message xmlns="` + xmlNamespace + `"><MessageBody>`)
	_ = xml.EscapeText(&b, []byte(body))
	b.WriteString("</MessageBody>")
	if tag != "" {
		b.WriteString("<MessageTag>")
		_ = xml.EscapeText(&b, []byte(tag))
		b.WriteString("</MessageTag>")
	}
	if shardingKey != "" {
		b.WriteString("<Properties>" + propShardingKey + ":")
		_ = xml.EscapeText(&b, []byte(shardingKey))
		b.WriteString("|</Properties>")
	}
	b.WriteString("</Message>")
	status, out, err := c.Do(ctx, http.MethodPost, "/topics/"+url.PathEscape(topic)+"/messages?ns="+url.QueryEscape(c.InstanceID), b.Bytes(), nil)
	if err != nil {
		return "", err
	}
	if status != http.StatusCreated {
		return "", apiError(status, out)
	}
	var res struct {
		ID string `xml:"MessageId"`
	}
	if err := xml.Unmarshal(out, &res); err != nil {
		return "", fmt.Errorf("malformed publish response: %w", err)
	}
	return res.ID, nil
}

// Do sends one request signed as the SDKs sign it (the same headers, Content-MD5
// form and string to sign) and returns the status and body.
func (c *Client) Do(ctx context.Context, method, target string, body []byte, header http.Header) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.Endpoint+target, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	sum := md5.Sum(body)
	req.Header.Set("Content-MD5", base64.StdEncoding.EncodeToString([]byte(hex.EncodeToString(sum[:]))))
	req.Header.Set("Content-Type", "text/xml;charset=utf-8")
	req.Header.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	req.Header.Set("X-Mq-Version", "2015-06-06")
	req.RequestURI = target
	req.Header.Set("Authorization", "MQ "+c.AccessKeyID+":"+encodeSignature(sign(c.AccessKeySecret, stringToSign(req))))
	req.RequestURI = ""
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	res, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	// A consume answer holds up to 16 escaped messages.
	out, err := io.ReadAll(io.LimitReader(res.Body, maxHandles*maxRequestBytes))
	return res.StatusCode, out, err
}

func apiError(status int, body []byte) error {
	e := &APIError{Status: status}
	if err := xml.Unmarshal(body, e); err != nil || e.Code == "" {
		e.Code, e.Message = http.StatusText(status), strings.TrimSpace(string(body))
	}
	return e
}
