module github.com/portico-mail/portico

go 1.26.8

require (
	github.com/emersion/go-imap/v2 v2.0.0-beta.8
	github.com/emersion/go-sasl v0.0.0-20241020182733-b788ff22d5a6
	github.com/pires/go-proxyproto v0.15.0
	go.uber.org/goleak v1.3.0
	go.yaml.in/yaml/v3 v3.0.6
	golang.org/x/sys v0.50.0
)

require (
	github.com/emersion/go-message v0.18.2 // indirect
	github.com/stretchr/testify v1.12.1 // indirect
)
