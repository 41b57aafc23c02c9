"""The demo's report: one self-contained HTML file (inline CSS and SVG, no script, no outside
request) telling what the demo did, the fleet's state, what revoking a lot costs to publish, and how
the renewal strategies compare."""
