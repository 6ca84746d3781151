#!/usr/bin/env python3
"""The dashboard's panels as Grafana lays them out (its gridPos: 24 columns), each with its
title and its queries, as one HTML page: what docs/grafana-panels.png is a screenshot of.

    python3 deploy/grafana/panels.py > /tmp/panels.html
    chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars \
        --window-size=1520,2000 --screenshot=docs/grafana-panels.png file:///tmp/panels.html
"""
import html
import json
import pathlib

dashboard = json.loads((pathlib.Path(__file__).parent / "hotline-gateway.json").read_text())
cell = 62  # px per column
row = 20  # px per grid row (shorter than Grafana's: the list, not the plots)
boxes = []
bottom = 0
for panel in dashboard["panels"]:
    pos = panel["gridPos"]
    bottom = max(bottom, (pos["y"] + pos["h"]) * row)
    queries = "".join(
        f"<li>{html.escape(t.get('legendFormat') or '')}: <code>{html.escape(t['expr'])}</code></li>"
        for t in panel.get("targets", [])
    )
    boxes.append(
        f'<div class="panel" style="left:{pos["x"] * cell}px;top:{pos["y"] * row}px;'
        f'width:{pos["w"] * cell - 8}px;height:{pos["h"] * row - 8}px">'
        f'<h2>{panel["id"]}. {html.escape(panel["title"])}</h2><ul>{queries}</ul></div>'
    )
print(f"""<!doctype html><meta charset="utf-8"><title>{html.escape(dashboard["title"])}</title>
<style>
body {{ margin: 0; background: #111217; color: #ccccdc; font: 13px system-ui, sans-serif; }}
header {{ padding: 10px 14px; font-size: 18px; color: #fff; }}
.grid {{ position: relative; margin: 0 14px; height: {bottom}px; }}
.panel {{ position: absolute; background: #181b1f; border: 1px solid #2c3235; border-radius: 3px;
  padding: 6px 10px; overflow: hidden; }}
h2 {{ font-size: 14px; margin: 0 0 6px; color: #fff; font-weight: 500; }}
ul {{ margin: 0; padding-left: 16px; }} li {{ margin: 2px 0; }}
code {{ color: #8ab8ff; font-size: 11px; word-break: break-all; }}
</style>
<header>{html.escape(dashboard["title"])}: {len(dashboard["panels"])} panels
(deploy/grafana/hotline-gateway.json)</header>
<div class="grid">{"".join(boxes)}</div>""")
