"""The HTTP toolkit handlers use: who the peer is (client certificate, trusted proxies) and how a
devid error becomes an HTTP answer. The application is assembled in `devid.server`."""
