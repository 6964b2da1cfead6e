"""Hand-written peers for what no real server here can be (see DESIGN.md, Tests)."""
