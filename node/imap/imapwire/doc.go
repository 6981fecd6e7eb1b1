// Package imapwire implements the hardened subset of the IMAP wire protocol
// that Portico needs before a session is handed over to byte relaying:
//
//   - Reader parses client commands in the not-authenticated state
//     (RFC 9051 §2.2.1 client protocol sender / server receiver,
//     §4.1 atom, §4.2 number, §4.3 string: quoted and literal, §4.4
//     parenthesized list, §4.5 NIL, and the command/tag/astring/literal
//     rules of the formal syntax in §9; RFC 3501 §4 and §9 are the same
//     for this subset). Non-synchronizing literals "{n+}" from RFC 7888
//     (LITERAL+ / LITERAL-, §3 and §4) are accepted; literal8 "~{n}"
//     (RFC 3516 / RFC 9051 §4.3.1) is rejected. The ID command's list
//     argument (RFC 2971 §3.3) and SASL initial responses (RFC 4959 §3) are
//     plain arguments and need no special handling.
//   - ResponseReader parses server responses received from a backend
//     (RFC 9051 §2.2.2 server protocol sender, §7.1 status responses
//     and response codes, §7.5 command continuation request, and the
//     response rules of §9), keeping the raw bytes so they can be
//     forwarded byte-exact.
//   - Quote, AppendAstring, AppendLiteralHeader and ValidTag produce wire
//     syntax.
//
// # Line endings
//
// Lines are terminated by CRLF (RFC 9051 §2.2). Like Dovecot and nginx,
// both readers leniently also accept a bare LF. A CR that is not directly
// followed by LF is an ordinary (invalid) character.
//
// # Limits
//
// MaxLine bounds every command (or response) outside literal data: the
// sum of all its line segments including literal headers and line
// terminators. MaxLiteral bounds the sum of the sizes of all literals in
// one command (or response). Nothing is ever allocated in proportion to a
// size claimed by the peer beyond these limits, and an overlong line is
// discarded (command reader) or rejected (response reader) without being
// buffered. RFC 7162 §4 recommends accepting command lines of at least
// 8192 octets, hence the defaults.
//
// # Ownership
//
// A *Command or *Response returned by a reader belongs to the caller and is
// never modified or reused by the reader; its strings stay valid forever.
// Only Reader.ReadLine returns memory that aliases internal buffers (valid
// until the next call on the Reader). Readers are not safe for concurrent
// use.
//
// # Handling command errors
//
// Reader.ReadCommand errors, and what a server answers:
//
//   - *SyntaxError: "<tag> BAD <Msg>" ("* BAD <Msg>" without tag); continue.
//   - *LineTooLongError (errors.Is ErrLineTooLong): the line was discarded;
//     "<tag> BAD [TOOBIG] ..." or "* BAD [TOOBIG] ..."; continue.
//   - *LiteralTooLargeError, NonSync false: no continuation was sent;
//     "<tag> BAD [TOOBIG] ..."; continue.
//   - *LiteralTooLargeError, NonSync true: "<tag> BAD [TOOBIG] ...", then
//     close: the client is already sending the data.
//   - io.EOF (client closed between commands), io.ErrUnexpectedEOF, read
//     errors, errors from the continuation callback: close.
//
// Fatal tells the two groups apart; fatal errors are sticky. Callers
// should still count non-fatal errors and disconnect clients that produce
// too many. ErrorTag extracts the tag to answer with.
package imapwire
