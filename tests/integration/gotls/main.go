// gotls: a small IRC-ish TLS server on Go's crypto/tls, a test peer for
// baton's TLS integration tests (the "Go crypto/tls" column of the matrix;
// stands in for ergo, which Debian 12 does not package).
//
// Standard library only. Built by tests/integration/tlslib.py at test time.
//
// Flags: -listen 127.0.0.1:PORT -cert FILE -key FILE [-min 1.2|1.3]
// [-max 1.2|1.3] [-ciphers NAME,NAME] (TLS 1.2 suites by Go name; TLS 1.3
// suites are not configurable in Go) [-name SERVERNAME] [-clientca FILE]
// (request a client certificate; verified against FILE when given).
//
// stdout, one event per line (flushed):
//
//	LISTENING ADDR
//	CONN ID REMOTE VERSION CIPHER CLIENTFP   (CLIENTFP: sha256:HEX or -)
//	HSFAIL REMOTE ERROR
//	RECV ID LINE                             (every line a client sent)
//	REG ID NICK                              (registration complete, 001..376 sent)
//	CLOSED ID REASON
//	OK COMMAND / ERR COMMAND: REASON         (answers to stdin commands)
//
// stdin commands, one per line:
//
//	SEND ID|* RAWLINE       send RAWLINE (CRLF appended) to one or every connection
//	SAY #CHAN NICK TEXT     inject ":NICK!NICK@inject PRIVMSG #CHAN :TEXT" to the channel's members
//	CLOSE ID                close a connection (close_notify, then TCP close)
//	KEYUPDATE ID            always ERR: Go's crypto/tls cannot initiate a KeyUpdate
//	                        (it only answers update_requested from the peer)
//
// IRC subset: PASS (recorded), CAP LS/END, NICK, USER, PING/PONG, JOIN (echo,
// 353/366), PART, PRIVMSG/NOTICE (relayed to the other members of a channel,
// or to a nick), MODE/WHO (minimal answers), QUIT (ERROR + close).
package main

import (
	"bufio"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
)

type client struct {
	id    int
	conn  *tls.Conn
	wmu   sync.Mutex
	nick  string
	user  bool
	reg   bool
	chans map[string]bool
}

var (
	mu       sync.Mutex
	clients  = map[int]*client{}
	channels = map[string]map[int]*client{}
	nextID   = 1
	outMu    sync.Mutex
	out      = bufio.NewWriter(os.Stdout)
	srvName  = "gotls.test"
)

func emit(format string, args ...interface{}) {
	outMu.Lock()
	fmt.Fprintf(out, format+"\n", args...)
	out.Flush()
	outMu.Unlock()
}

func (c *client) send(line string) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.conn.Write([]byte(line + "\r\n"))
}

func (c *client) numeric(num, rest string) {
	nick := c.nick
	if nick == "" {
		nick = "*"
	}
	c.send(fmt.Sprintf(":%s %s %s %s", srvName, num, nick, rest))
}

func versionName(v uint16) string {
	switch v {
	case tls.VersionTLS13:
		return "TLSv1.3"
	case tls.VersionTLS12:
		return "TLSv1.2"
	case tls.VersionTLS11:
		return "TLSv1.1"
	case tls.VersionTLS10:
		return "TLSv1.0"
	}
	return "unknown"
}

func parseVersion(s string) uint16 {
	switch s {
	case "1.3":
		return tls.VersionTLS13
	case "1.2":
		return tls.VersionTLS12
	case "":
		return 0
	}
	fmt.Fprintf(os.Stderr, "gotls: bad TLS version %q (1.2 or 1.3)\n", s)
	os.Exit(2)
	return 0
}

// split an IRC line into prefix-less command and params.
func parse(line string) (string, []string) {
	if strings.HasPrefix(line, "@") {
		if i := strings.IndexByte(line, ' '); i >= 0 {
			line = strings.TrimLeft(line[i+1:], " ")
		}
	}
	if strings.HasPrefix(line, ":") {
		if i := strings.IndexByte(line, ' '); i >= 0 {
			line = strings.TrimLeft(line[i+1:], " ")
		} else {
			return "", nil
		}
	}
	var params []string
	trailing := ""
	hasTrailing := false
	if i := strings.Index(line, " :"); i >= 0 {
		trailing = line[i+2:]
		hasTrailing = true
		line = line[:i]
	}
	f := strings.Fields(line)
	if len(f) == 0 {
		return "", nil
	}
	params = f[1:]
	if hasTrailing {
		params = append(params, trailing)
	}
	return strings.ToUpper(f[0]), params
}

func (c *client) mask() string { return fmt.Sprintf("%s!%s@gotls", c.nick, c.nick) }

func (c *client) maybeRegister() {
	if c.reg || c.nick == "" || !c.user {
		return
	}
	c.reg = true
	c.numeric("001", ":Welcome to the gotls test network "+c.mask())
	c.numeric("002", ":Your host is "+srvName+", running gotls ("+runtime.Version()+")")
	c.numeric("003", ":This server was created today")
	c.numeric("004", srvName+" gotls-1 io ov")
	c.numeric("005", "CHANTYPES=# PREFIX=(ov)@+ NETWORK=GoTLS CASEMAPPING=ascii NICKLEN=30 :are supported by this server")
	c.numeric("375", ":- "+srvName+" Message of the day -")
	c.numeric("372", ":- gotls test server")
	c.numeric("376", ":End of MOTD command")
	emit("REG %d %s", c.id, c.nick)
}

func (c *client) handle(line string) bool {
	cmd, p := parse(line)
	mu.Lock()
	defer mu.Unlock()
	switch cmd {
	case "CAP":
		if len(p) > 0 && strings.ToUpper(p[0]) == "LS" {
			c.send(":" + srvName + " CAP * LS :")
		}
	case "PASS":
	case "NICK":
		if len(p) > 0 {
			old := c.mask()
			wasReg := c.reg
			c.nick = p[0]
			if wasReg {
				c.send(":" + old + " NICK " + c.nick)
			}
			c.maybeRegister()
		}
	case "USER":
		c.user = true
		c.maybeRegister()
	case "PING":
		arg := ""
		if len(p) > 0 {
			arg = p[len(p)-1]
		}
		c.send(":" + srvName + " PONG " + srvName + " :" + arg)
	case "PONG":
	case "JOIN":
		if len(p) == 0 {
			break
		}
		for _, ch := range strings.Split(p[0], ",") {
			if ch == "" {
				continue
			}
			members := channels[ch]
			if members == nil {
				members = map[int]*client{}
				channels[ch] = members
			}
			if members[c.id] != nil {
				continue
			}
			members[c.id] = c
			c.chans[ch] = true
			for _, m := range members {
				m.send(":" + c.mask() + " JOIN " + ch)
			}
			names := []string{}
			for _, m := range members {
				names = append(names, m.nick)
			}
			c.numeric("353", "= "+ch+" :"+strings.Join(names, " "))
			c.numeric("366", ch+" :End of NAMES list")
		}
	case "PART":
		if len(p) == 0 {
			break
		}
		for _, ch := range strings.Split(p[0], ",") {
			members := channels[ch]
			if members == nil || members[c.id] == nil {
				continue
			}
			for _, m := range members {
				m.send(":" + c.mask() + " PART " + ch)
			}
			delete(members, c.id)
			delete(c.chans, ch)
		}
	case "PRIVMSG", "NOTICE":
		if len(p) < 2 {
			break
		}
		msg := ":" + c.mask() + " " + cmd + " " + p[0] + " :" + p[1]
		if strings.HasPrefix(p[0], "#") {
			for id, m := range channels[p[0]] {
				if id != c.id {
					m.send(msg)
				}
			}
		} else {
			for _, m := range clients {
				if m.nick == p[0] {
					m.send(msg)
				}
			}
		}
	case "MODE":
		if len(p) == 1 && strings.HasPrefix(p[0], "#") {
			c.numeric("324", p[0]+" +")
		}
	case "WHO":
		if len(p) > 0 {
			c.numeric("315", p[0]+" :End of WHO list")
		}
	case "QUIT":
		c.send("ERROR :Closing link (quit)")
		return false
	}
	return true
}

func (c *client) remove() {
	mu.Lock()
	defer mu.Unlock()
	delete(clients, c.id)
	for ch := range c.chans {
		for _, m := range channels[ch] {
			if m.id != c.id && c.reg {
				m.send(":" + c.mask() + " QUIT :Client closed")
			}
		}
		delete(channels[ch], c.id)
	}
}

func serve(raw net.Conn, cfg *tls.Config) {
	conn := tls.Server(raw, cfg)
	if err := conn.Handshake(); err != nil {
		emit("HSFAIL %s %s", raw.RemoteAddr(), strings.ReplaceAll(err.Error(), "\n", " "))
		conn.Close()
		return
	}
	st := conn.ConnectionState()
	fp := "-"
	if len(st.PeerCertificates) > 0 {
		sum := sha256.Sum256(st.PeerCertificates[0].Raw)
		fp = "sha256:" + hex.EncodeToString(sum[:])
	}
	mu.Lock()
	c := &client{id: nextID, conn: conn, chans: map[string]bool{}}
	nextID++
	clients[c.id] = c
	mu.Unlock()
	emit("CONN %d %s %s %s %s", c.id, raw.RemoteAddr(), versionName(st.Version),
		tls.CipherSuiteName(st.CipherSuite), fp)
	r := bufio.NewReaderSize(conn, 64*1024)
	reason := "eof"
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			if line != "" {
				emit("RECV %d %s", c.id, strings.TrimRight(line, "\r\n"))
			}
			if err.Error() != "EOF" {
				reason = strings.ReplaceAll(err.Error(), "\n", " ")
			}
			break
		}
		line = strings.TrimRight(line, "\r\n")
		emit("RECV %d %s", c.id, line)
		if !c.handle(line) {
			reason = "quit"
			break
		}
	}
	c.remove()
	conn.Close()
	emit("CLOSED %d %s", c.id, reason)
}

func control() {
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		f := strings.SplitN(line, " ", 3)
		cmd := strings.ToUpper(f[0])
		switch cmd {
		case "SEND":
			if len(f) < 3 {
				emit("ERR SEND: usage SEND ID|* LINE")
				continue
			}
			mu.Lock()
			n := 0
			for id, c := range clients {
				if f[1] == "*" || f[1] == strconv.Itoa(id) {
					c.send(f[2])
					n++
				}
			}
			mu.Unlock()
			if n == 0 {
				emit("ERR SEND: no such connection %s", f[1])
			} else {
				emit("OK SEND %d", n)
			}
		case "SAY":
			g := strings.SplitN(line, " ", 4)
			if len(g) < 4 {
				emit("ERR SAY: usage SAY #CHAN NICK TEXT")
				continue
			}
			mu.Lock()
			n := 0
			for _, m := range channels[g[1]] {
				m.send(fmt.Sprintf(":%s!%s@inject PRIVMSG %s :%s", g[2], g[2], g[1], g[3]))
				n++
			}
			mu.Unlock()
			emit("OK SAY %d", n)
		case "CLOSE":
			if len(f) < 2 {
				emit("ERR CLOSE: usage CLOSE ID")
				continue
			}
			mu.Lock()
			var c *client
			for id, m := range clients {
				if strconv.Itoa(id) == f[1] {
					c = m
				}
			}
			mu.Unlock()
			if c == nil {
				emit("ERR CLOSE: no such connection %s", f[1])
			} else {
				c.conn.Close()
				emit("OK CLOSE %s", f[1])
			}
		case "KEYUPDATE":
			emit("ERR KEYUPDATE: Go %s crypto/tls cannot initiate a KeyUpdate (it only answers one)", runtime.Version())
		case "":
		default:
			emit("ERR %s: unknown command", cmd)
		}
	}
	// stdin closed: the test harness is gone
	os.Exit(0)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	certFile := flag.String("cert", "", "server certificate (PEM)")
	keyFile := flag.String("key", "", "server key (PEM)")
	minV := flag.String("min", "1.2", "minimum TLS version (1.2 or 1.3)")
	maxV := flag.String("max", "1.3", "maximum TLS version (1.2 or 1.3)")
	ciphers := flag.String("ciphers", "", "comma-separated TLS 1.2 cipher suites (Go names)")
	name := flag.String("name", "gotls.test", "server name")
	clientCA := flag.String("clientca", "", "request client certificates, verify against this CA file ('any' = request without verifying)")
	flag.Parse()
	srvName = *name

	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		fmt.Fprintf(os.Stderr, "gotls: %v\n", err)
		os.Exit(2)
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   parseVersion(*minV),
		MaxVersion:   parseVersion(*maxV),
	}
	if *ciphers != "" {
		byName := map[string]uint16{}
		for _, s := range tls.CipherSuites() {
			byName[s.Name] = s.ID
		}
		for _, n := range strings.Split(*ciphers, ",") {
			id, ok := byName[n]
			if !ok {
				fmt.Fprintf(os.Stderr, "gotls: unknown cipher suite %q\n", n)
				os.Exit(2)
			}
			cfg.CipherSuites = append(cfg.CipherSuites, id)
		}
	}
	if *clientCA == "any" {
		cfg.ClientAuth = tls.RequestClientCert
	} else if *clientCA != "" {
		pem, err := os.ReadFile(*clientCA)
		if err != nil {
			fmt.Fprintf(os.Stderr, "gotls: %v\n", err)
			os.Exit(2)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(pem)
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "gotls: %v\n", err)
		os.Exit(2)
	}
	emit("LISTENING %s", ln.Addr())
	go control()
	for {
		raw, err := ln.Accept()
		if err != nil {
			fmt.Fprintf(os.Stderr, "gotls: accept: %v\n", err)
			os.Exit(1)
		}
		go serve(raw, cfg)
	}
}
