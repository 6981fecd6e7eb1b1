package netx

import "io"

var errEOF = io.EOF
