"""The operator dashboard under /ui: server-rendered HTML over the store, no JavaScript, no CDN.

`devid.ui.app.ui_routes(authority)` gives the routes `devid.server.app.make_app` mounts.
"""
