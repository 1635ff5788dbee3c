"""Pure rendering read by the notebook and the handoff: snapshots, graph layout, timeline SVG."""
