"""Local servers for the demo and the tests: the MCP servers (``localservers``), the OAuth server (``oauth_server``),
the Port stand-in and the demo's headless browser. The product never imports this package; it may import anything in
the product."""
