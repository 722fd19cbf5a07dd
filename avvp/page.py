"""The parse result as one page to look at: `index.html` beside the CSVs of `--mode parse`.

One self-contained file (data, script and style inline; no network, no server): open it from the
folder. One block per video (`data-video-id="<id>"`): the video itself when its source file is
known (a click on a segment seeks there), the audio and visual events on 10-second timelines
(predicted bars over the true spans when truth is known), each row's cells shaded by the segment
probability, every class's segment probabilities as a heat strip, and, with truth, the LLP table
and per-class F at the top. Blocks are drawn when they scroll into view, so a parse of the test
split's 1,200 videos opens at once.
"""
import html
import json
import os
from urllib.parse import quote

import numpy as np

from . import llp
from .files import atomic_write_text

PAGE_FILE = "index.html"


def runs_of(pred):
    """(25, 10) 0/1 -> [[class, onset, offset], ...]: each contiguous run of segments (offset exclusive)."""
    return [[int(c), int(on), int(off)] for c in np.flatnonzero(np.asarray(pred).any(1))
            for on, off in llp.runs(pred[c])]


def video_src(source, out_dir):
    """A source video's path as a URL relative to the page's folder (the page and the video can move
    together); None when there is no source."""
    if not source:
        return None
    rel = os.path.relpath(os.path.abspath(source), os.path.abspath(out_dir))
    return quote(rel.replace(os.sep, "/"))


def page_data(split, probs, pred_a, pred_v, metrics, per_class, sources, out_dir, title):
    """What the page shows, as plain JSON-ready values (probabilities in percent, rounded)."""
    videos = []
    fp = np.rint(probs["frame_prob"] * 100).astype(int)                    # (N, 10, 2, 25)
    for i, vid in enumerate(split.filenames):
        v = {"id": vid, "src": video_src((sources or {}).get(vid), out_dir),
             "pa": runs_of(pred_a[i]), "pv": runs_of(pred_v[i]),
             "ap": np.round(probs["audio_prob"][i], 3).tolist(), "vp": np.round(probs["visual_prob"][i], 3).tolist(),
             "fp": fp[i].transpose(1, 2, 0).tolist()}                     # (2, 25, 10): modality, class, segment
        if split.gt_a is not None:
            v["ga"], v["gv"] = runs_of(split.gt_a[i]), runs_of(split.gt_v[i])
        if split.labels is not None:
            v["weak"] = np.flatnonzero(split.labels[i]).tolist()
        videos.append(v)
    table = None
    if per_class is not None:
        table = [[name] + [None if np.isnan(x) else round(float(x), 1) for x in row[["f_a", "f_v", "f_av"]]]
                 for name, row in per_class.iterrows()]
    return {"title": title, "classes": list(llp.CLASSES), "videos": videos,
            "metrics": None if metrics is None else {k: round(float(x), 2) for k, x in metrics.items()},
            "per_class": table, "events": [int(sum(len(v["pa"]) for v in videos)), int(sum(len(v["pv"]) for v in videos))]}


def write_page(out_dir, data):
    """index.html in out_dir (atomically); returns its path."""
    path = os.path.join(out_dir, PAGE_FILE)
    blob = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")  # no "</script>" inside the data
    atomic_write_text(path, TEMPLATE.replace("{{TITLE}}", html.escape(data["title"] or "AVVP parse"))
                      .replace("{{DATA}}", blob))
    return path


TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{TITLE}}</title>
<style>
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;padding:16px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} h2{font-size:15px;margin:0 0 8px;font-family:ui-monospace,monospace}
.sub{color:#555;margin-bottom:12px} table.llp{border-collapse:collapse;margin:8px 0 12px}
table.llp td,table.llp th{border:1px solid #ccc;padding:3px 8px;text-align:right} table.llp th{background:#eee}
table.llp td:first-child,table.llp th:first-child{text-align:left}
.legend span{display:inline-block;margin-right:14px} .sw{display:inline-block;width:22px;height:10px;vertical-align:middle;margin-right:4px}
.video{background:#fff;border:1px solid #ddd;border-radius:6px;margin:12px 0;padding:10px 12px;min-height:120px}
.video .meta{font-weight:normal;color:#666;font-family:system-ui,sans-serif;font-size:13px;margin-left:8px}
.top{display:flex;gap:14px;align-items:flex-start;flex-wrap:wrap} video{width:320px;max-width:100%;background:#000}
.tl{flex:1;min-width:480px} .row{display:flex;align-items:center;height:22px}
.label{width:190px;font-size:12px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.row.audio .label{color:#1f5f99} .row.visual .label{color:#b35806}
.track{position:relative;flex:1;height:18px;display:flex;cursor:pointer}
.cell{flex:1;border-right:1px solid #e4e4e4} .cell:hover{outline:1px solid #888}
.bar{position:absolute;pointer-events:none;border-radius:2px}
.bar.truth{top:0;height:18px;opacity:.9} .row.audio .truth{background:#cfe3f5;outline:1px solid #1f5f99}
.row.visual .truth{background:#fbe0c3;outline:1px solid #b35806}
.bar.pred{top:5px;height:8px} .row.audio .pred{background:#1f5f99} .row.visual .pred{background:#b35806}
.playhead{position:absolute;top:-2px;bottom:-2px;width:2px;background:#d00;left:0;pointer-events:none;display:none}
.prob{width:46px;text-align:right;font-size:12px;color:#555}
.axis{display:flex;margin-left:190px;margin-right:46px;font-size:11px;color:#777} .axis span{flex:1}
.sep{border-top:1px solid #eee;margin:2px 0}
details{margin-top:6px} summary{cursor:pointer;color:#444;font-size:13px}
.heat{display:flex;gap:18px;flex-wrap:wrap} .heat table{border-collapse:collapse;font-size:11px}
.heat td{width:16px;height:12px;padding:0} .heat td.name{width:auto;padding-right:6px;white-space:nowrap}
.none{color:#888;font-style:italic}
</style></head>
<body>
<h1 id="title"></h1>
<div class="sub" id="summary"></div>
<div id="scores"></div>
<div class="legend"><span><i class="sw" style="background:#1f5f99"></i>predicted audio</span><span><i class="sw" style="background:#b35806"></i>predicted visual</span><span class="truth-key"><i class="sw" style="background:#cfe3f5;outline:1px solid #1f5f99"></i>true audio</span><span class="truth-key"><i class="sw" style="background:#fbe0c3;outline:1px solid #b35806"></i>true visual</span><span><i class="sw" style="background:linear-gradient(90deg,#fff,#666)"></i>segment probability</span></div>
<div id="videos"></div>
<script type="application/json" id="data">{{DATA}}</script>
<script>
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("data").textContent), C = D.classes;
  function el(tag, cls, text) { var e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; }
  function pct(x) { return (x * 10) + "%"; }
  function shade(p) { var g = Math.round(255 - 1.5 * p); return "rgb(" + g + "," + g + "," + g + ")"; }
  document.getElementById("title").textContent = D.title || "AVVP parse";
  if (!D.videos.some(function (v) { return v.ga; })) {   // no truth: no truth in the legend
    Array.prototype.forEach.call(document.querySelectorAll(".truth-key"), function (e) { e.style.display = "none"; });
  }
  var nv = D.videos.length, withSrc = D.videos.filter(function (v) { return v.src; }).length;
  document.getElementById("summary").textContent = nv + " video" + (nv === 1 ? "" : "s") + ": " + D.events[0] +
    " audio and " + D.events[1] + " visual events predicted" + (withSrc ? "; " + withSrc + " with their video (click a segment to seek)" : "");
  if (D.metrics) {
    var t = el("table", "llp"), h = el("tr"); h.appendChild(el("th", "", "LLP (%)"));
    [["Audio", "a"], ["Visual", "v"], ["Audio-Visual", "av"], ["Type@AV", "type"], ["Event@AV", "event"]].forEach(function (c) { h.appendChild(el("th", "", c[0])); });
    t.appendChild(h);
    [["Segment-level", "seg"], ["Event-level", "evt"]].forEach(function (r) {
      var tr = el("tr"); tr.appendChild(el("td", "", r[0]));
      ["a", "v", "av", "type", "event"].forEach(function (k) { tr.appendChild(el("td", "", D.metrics[r[1] + "_" + k].toFixed(2))); });
      t.appendChild(tr);
    });
    document.getElementById("scores").appendChild(t);
  }
  if (D.per_class) {
    var d = el("details"), s = el("summary", "", "per-class segment F (%)"), pt = el("table", "llp"), ph = el("tr");
    ["class", "Audio", "Visual", "Audio-Visual"].forEach(function (x) { ph.appendChild(el("th", "", x)); });
    pt.appendChild(ph);
    D.per_class.forEach(function (r) { var tr = el("tr"); r.forEach(function (x, j) { tr.appendChild(el("td", "", j === 0 ? x : (x === null ? "-" : x.toFixed(1)))); }); pt.appendChild(tr); });
    d.appendChild(s); d.appendChild(pt); document.getElementById("scores").appendChild(d);
  }
  function classesOf(v) {
    var set = {};
    [v.pa, v.pv, v.ga || [], v.gv || []].forEach(function (runs) { runs.forEach(function (r) { set[r[0]] = 1; }); });
    (v.weak || []).forEach(function (c) { set[c] = 1; });
    var cs = Object.keys(set).map(Number).sort(function (a, b) { return a - b; });
    if (!cs.length) {   // nothing anywhere: the three likeliest classes
      cs = C.map(function (_, c) { return c; }).sort(function (a, b) { return Math.max(v.ap[b], v.vp[b]) - Math.max(v.ap[a], v.vp[a]); }).slice(0, 3).sort(function (a, b) { return a - b; });
    }
    return cs;
  }
  function fill(sec, v) {
    var top = el("div", "top"), player = null;
    if (v.src) { player = el("video"); player.controls = true; player.preload = "metadata"; player.src = v.src; top.appendChild(player); }
    var tl = el("div", "tl"), axis = el("div", "axis");
    for (var s = 0; s < 10; s++) axis.appendChild(el("span", "", s + "s"));
    tl.appendChild(axis);
    var heads = [];
    classesOf(v).forEach(function (c, k) {
      if (k) tl.appendChild(el("div", "sep"));
      [["audio", 0, v.pa, v.ga, v.ap], ["visual", 1, v.pv, v.gv, v.vp]].forEach(function (m) {
        var row = el("div", "row " + m[0]); row.setAttribute("data-class", C[c]);
        row.appendChild(el("span", "label", C[c] + " (" + m[0] + ")"));
        var track = el("div", "track");
        for (var s = 0; s < 10; s++) {
          var cell = el("div", "cell"); var p = v.fp[m[1]][c][s];
          cell.style.background = shade(p); cell.title = m[0] + " " + C[c] + ", second " + s + "-" + (s + 1) + ": p = " + (p / 100).toFixed(2);
          cell.setAttribute("data-seg", s); track.appendChild(cell);
        }
        (m[3] || []).forEach(function (r) { if (r[0] === c) { var b = el("div", "bar truth"); b.style.left = pct(r[1]); b.style.width = pct(r[2] - r[1]); track.appendChild(b); } });
        m[2].forEach(function (r) { if (r[0] === c) { var b = el("div", "bar pred"); b.style.left = pct(r[1]); b.style.width = pct(r[2] - r[1]);
          b.setAttribute("data-onset", r[1]); b.setAttribute("data-offset", r[2]); track.appendChild(b); } });
        var head = el("div", "playhead"); track.appendChild(head); heads.push(head);
        track.addEventListener("click", function (e) {
          var seg = Math.min(9, Math.floor(10 * (e.clientX - track.getBoundingClientRect().left) / track.clientWidth));
          sec.setAttribute("data-seek", seg);
          if (player) { player.currentTime = seg; }
        });
        row.appendChild(track); row.appendChild(el("span", "prob", m[4][c].toFixed(2))); tl.appendChild(row);
      });
    });
    top.appendChild(tl); sec.appendChild(top);
    if (player) player.addEventListener("timeupdate", function () {
      heads.forEach(function (h) { h.style.display = "block"; h.style.left = Math.min(100, player.currentTime * 10) + "%"; });
    });
    var det = el("details"), sum = el("summary", "", "segment probabilities of all 25 classes"), heat = el("div", "heat");
    ["audio", "visual"].forEach(function (name, m) {
      var t = el("table"), cap = el("caption", "", name); t.appendChild(cap);
      C.forEach(function (cn, c) { var tr = el("tr"); tr.appendChild(el("td", "name", cn));
        for (var s = 0; s < 10; s++) { var td = el("td"); td.style.background = shade(v.fp[m][c][s]); td.title = cn + " " + name + ", second " + s + ": " + (v.fp[m][c][s] / 100).toFixed(2); tr.appendChild(td); }
        t.appendChild(tr); });
      heat.appendChild(t);
    });
    det.appendChild(sum); det.appendChild(heat); sec.appendChild(det);
    sec.setAttribute("data-filled", "1");
  }
  var box = document.getElementById("videos"), secs = [];
  D.videos.forEach(function (v, i) {
    var sec = el("section", "video"); sec.setAttribute("data-video-id", v.id); sec.id = "v" + i;
    var h = el("h2", "", v.id);
    if (v.weak) h.appendChild(el("span", "meta", "weak labels: " + (v.weak.map(function (c) { return C[c]; }).join(", ") || "none")));
    sec.appendChild(h); box.appendChild(sec); secs.push(sec);
  });
  if ("IntersectionObserver" in window) {
    var io = new IntersectionObserver(function (entries) {
      entries.forEach(function (e) { if (e.isIntersecting) { var i = +e.target.id.slice(1); io.unobserve(e.target); fill(e.target, D.videos[i]); } });
    }, {rootMargin: "800px 0px"});
    secs.forEach(function (s) { io.observe(s); });
  } else {
    secs.forEach(function (s, i) { fill(s, D.videos[i]); });
  }
})();
</script>
</body></html>
"""
