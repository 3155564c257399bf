package mqhttp

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/xml"
	"net/http"
	"strings"
)

// xmlNamespace is the namespace every response root carries. The Java SDK parses error
// bodies with JAXB against exactly this URI; a trailing slash breaks it.
const xmlNamespace = "http://mq.aliyuncs.com/doc/v1"

// Error is an mq-http error: an HTTP status plus the XML Code the SDKs branch on.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// errorBody is the XML error document. Python's decoder requires all four children,
// even when empty.
type errorBody struct {
	XMLName   xml.Name `xml:"Error"`
	XMLNS     string   `xml:"xmlns,attr"`
	Code      string   `xml:"Code"`
	Message   string   `xml:"Message"`
	RequestID string   `xml:"RequestId"`
	HostID    string   `xml:"HostId"`
}

// newRequestID returns a 24-character uppercase hex token, the shape MNS uses.
func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return strings.ToUpper(hex.EncodeToString(b[:]))
}

// setRequestID writes the request-id header in lowercase. The Python and Java SDKs look
// it up case-sensitively, so Header().Set's canonical form would hide it from them.
func setRequestID(w http.ResponseWriter, id string) {
	w.Header()["x-mq-request-id"] = []string{id}
}

// writeError answers with e as an XML error document.
func writeError(w http.ResponseWriter, r *http.Request, requestID string, e *Error) {
	body := errorDocument(e.Code, e.Message, requestID, "http://"+r.Host)
	setRequestID(w, requestID)
	w.Header().Set("Content-Type", "text/xml;charset=utf-8")
	w.WriteHeader(e.Status)
	_, _ = w.Write(body)
}

// errorDocument is the XML error document, with its declaration.
func errorDocument(code, message, requestID, hostID string) []byte {
	body, err := xml.Marshal(errorBody{XMLNS: xmlNamespace, Code: code, Message: message, RequestID: requestID, HostID: hostID})
	if err != nil { // cannot happen for these field types; answer something well-formed anyway
		body = []byte("<Error/>")
	}
	return append([]byte(xml.Header), body...)
}
