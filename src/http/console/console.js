// tessera console: draws /console/data.json as charts, a device timeline, tileset coverage,
// roots and a log viewer. Without this script the page shows the server's plain tables.
(function () {
  'use strict';
  var $ = function (id) { return document.getElementById(id); };
  var W = 320, H = 96, L = 36, R = 4, T = 6, B = 14;
  var COLORS = ['#2f81f7', '#1a7f37', '#bf8700', '#cf222e', '#8250df'];
  var POLL_MS = 5000, DEVICES_MS = 60000, ROW = 18, NAMEW = 180, LOG_MAX = 2e6;
  var data = null, devs = [], shown = [], sel = null, devKey = '', tsKey = '';
  var fetchedAt = Date.now(), namesKey = '', zoomOf = Object.create(null), covDone = Object.create(null), covObs = null;
  var devicesStarted = false;

  // The plain tables stay until the first data arrives: a console that cannot fetch still shows them.
  function reveal() {
    $('plain').hidden = true;
    $('nav').hidden = false;
    Array.prototype.forEach.call(document.querySelectorAll('.rich'), function (s) { s.hidden = false; });
  }

  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) { return '&#' + c.charCodeAt(0) + ';'; });
  }
  function si(v, unit) {
    if (v == null || isNaN(v)) return '–';
    var a = Math.abs(v), p = ['', 'k', 'M', 'G', 'T'], i = 0;
    while (a >= 1000 && i < p.length - 1) { a /= 1000; v /= 1000; i++; }
    var num = a >= 100 || (i === 0 && v === Math.round(v)) ? v.toFixed(0) : a >= 10 ? v.toFixed(1) : v.toFixed(2);
    return num + (p[i] || unit ? ' ' + p[i] + (unit || '') : '');
  }
  function ms(v) { return v == null ? '–' : v >= 1000 ? si(v / 1000, 's') : (v < 10 && v ? v.toFixed(1) : v.toFixed(0)) + ' ms'; }
  function pad(n) { return (n < 10 ? '0' : '') + n; }
  function hhmm(ms) { var d = new Date(ms); return pad(d.getHours()) + ':' + pad(d.getMinutes()); }
  var dayFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' });
  function day(ms) { return dayFmt.format(ms); }
  function stamp(ms) { var d = new Date(ms); return day(ms) + ' ' + hhmm(ms) + ':' + pad(d.getSeconds()); }
  function localInput(ms) { return new Date(ms - new Date(ms).getTimezoneOffset() * 60000).toISOString().slice(0, 19); }
  function last(a) { for (var i = a.length - 1; i >= 0; i--) if (a[i] != null) return a[i]; return null; }
  function nice(v) {
    if (!(v > 0)) return 1;
    var e = Math.pow(10, Math.floor(Math.log10(v))), f = v / e;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * e;
  }
  function ago(ms) {
    var s = (data.now_ms - ms) / 1000;
    return s < 90 ? Math.round(s) + ' s ago' : s < 5400 ? Math.round(s / 60) + ' min ago'
      : s < 129600 ? Math.round(s / 3600) + ' h ago' : Math.round(s / 86400) + ' d ago';
  }

  // Differences of a cumulative series: per second, or per interval.
  function diff(cum, t, perInterval) {
    var out = [];
    for (var i = 1; i < cum.length; i++) {
      var d = cum[i] - cum[i - 1], dt = (t[i] - t[i - 1]) / 1000;
      out.push(cum[i] == null || cum[i - 1] == null || d < 0 || dt <= 0 ? null : perInterval ? d : d / dt);
    }
    return out;
  }

  // One chart: lines [{v, name}] over times t; o.stack draws stacked areas, o.area fills one line.
  function chart(id, t, lines, o) {
    var svg = $(id), n = t.length, i, j, k;
    if (!svg) return;
    if (n < 2) { svg.innerHTML = '<text x=160 y=50 text-anchor=middle>waiting for samples</text>'; return; }
    var t0 = t[0], t1 = t[n - 1], top = 0, base = new Array(n).fill(0);
    var x = function (i) { return L + (t[i] - t0) / (t1 - t0 || 1) * (W - L - R); };
    for (i = 0; i < n; i++) {
      var s = 0;
      for (j = 0; j < lines.length; j++) {
        var v = lines[j].v[i];
        if (o.stack) s += v || 0; else if (v > top) top = v;
      }
      if (o.stack && s > top) top = s;
    }
    top = o.max || nice(top);
    var y = function (v) { return T + (1 - v / top) * (H - T - B); };
    var out = [];
    [0, 0.5, 1].forEach(function (f) {
      var yy = y(top * f).toFixed(1);
      out.push('<line class=grid x1=' + L + ' x2=' + (W - R) + ' y1=' + yy + ' y2=' + yy + '></line>' +
        '<text x=' + (L - 3) + ' y=' + (+yy + 3) + ' text-anchor=end>' + esc(o.fmt(top * f).replace(' ', '')) + '</text>');
    });
    [0, 0.5, 1].forEach(function (f) {
      var tt = t0 + f * (t1 - t0);
      out.push('<text x=' + (L + f * (W - L - R)) + ' y=' + (H - 2) + ' text-anchor=' +
        (f === 0 ? 'start' : f === 1 ? 'end' : 'middle') + '>' + hhmm(tt) + '</text>');
    });
    for (j = 0; j < lines.length; j++) {
      var c = COLORS[j % COLORS.length], v2 = lines[j].v, d = '', run = [];
      if (o.stack) {
        var up = [];
        for (i = 0; i < n; i++) up.push(base[i] + (v2[i] || 0));
        d = 'M' + x(0).toFixed(1) + ' ' + y(up[0]).toFixed(1);
        for (i = 1; i < n; i++) d += 'L' + x(i).toFixed(1) + ' ' + y(up[i]).toFixed(1);
        for (i = n - 1; i >= 0; i--) d += 'L' + x(i).toFixed(1) + ' ' + y(base[i]).toFixed(1);
        out.push('<path d="' + d + 'Z" fill="' + c + '" fill-opacity=.75 stroke="' + c + '" stroke-width=.5><title>' + esc(lines[j].name) + '</title></path>');
        base = up;
        continue;
      }
      var fill = '';
      for (i = 0; i <= n; i++) {
        if (i < n && v2[i] != null) { run.push(i); continue; }
        if (run.length) {
          var seg = run.map(function (k2, m) { return (m ? 'L' : 'M') + x(k2).toFixed(1) + ' ' + y(Math.min(v2[k2], top)).toFixed(1); }).join('');
          d += seg;
          if (o.area) fill += seg + 'L' + x(run[run.length - 1]).toFixed(1) + ' ' + y(0) + 'L' + x(run[0]).toFixed(1) + ' ' + y(0) + 'Z';
          run = [];
        }
      }
      if (fill) out.push('<path d="' + fill + '" fill="' + c + '" fill-opacity=.18></path>');
      if (d) out.push('<path d="' + d + '" fill=none stroke="' + c + '" stroke-width=1.2 stroke-linejoin=round><title>' + esc(lines[j].name) + '</title></path>');
    }
    svg.innerHTML = out.join('');
    svg.hover = function (px) {
      var i = Math.max(0, Math.min(n - 1, Math.round((px - L) / (W - L - R) * (n - 1))));
      var xi = x(i).toFixed(1), text = hhmm(t[i]) + '  ' + lines.map(function (l) {
        return (lines.length > 1 ? l.name + ' ' : '') + (l.v[i] == null ? '–' : o.fmt(l.v[i]));
      }).join(', ');
      return '<g class=cur><line x1=' + xi + ' x2=' + xi + ' y1=' + T + ' y2=' + (H - B) + '></line><text x=' + (L + 4) + ' y=' + (T + 8) + '>' + esc(text) + '</text></g>';
    };
    k = $(id.replace('chart-', 'l-'));
    if (k && lines.length > 1) {
      k.innerHTML = lines.map(function (l, m) { return '<i style="background:' + COLORS[m % COLORS.length] + '"></i>' + esc(l.name); }).join('');
    }
  }

  // A cursor over a chart reads its values at that time.
  function unhover(svg) { var g = svg.querySelector('.cur'); if (g) svg.removeChild(g); }
  document.querySelector('.charts').addEventListener('mousemove', function (e) {
    var svg = e.target.closest('svg');
    if (!svg || !svg.hover) return;
    unhover(svg);
    var r = svg.getBoundingClientRect();
    svg.insertAdjacentHTML('beforeend', svg.hover((e.clientX - r.left) / r.width * W));
  });
  document.querySelector('.charts').addEventListener('mouseout', function (e) {
    var svg = e.target.closest('svg');
    if (svg && !svg.contains(e.relatedTarget)) unhover(svg);
  });

  function drawLive(s) {
    var t = s.t_ms.slice(1), big = function (id, text) { $('v-' + id).textContent = text; };
    var req = diff(s.requests, s.t_ms);
    chart('chart-requests', t, [{ v: req, name: 'requests/s' }], { area: 1, fmt: si });
    big('requests', si(last(req), '/s'));
    var paths = ['sendfile', 'memory', 'buffered', 'body'].filter(function (k) { return s.bytes && s.bytes[k]; });
    var by = paths.map(function (k) { return { v: diff(s.bytes[k], s.t_ms), name: k }; });
    chart('chart-bytes', t, by, { stack: 1, fmt: function (v) { return si(v, 'B'); } });
    big('bytes', si(by.reduce(function (a, l) { return a + (l.v[l.v.length - 1] || 0); }, 0), 'B/s'));
    var cls = ['2xx', '3xx', '4xx', '5xx'].filter(function (k) { return s.status && s.status[k]; });
    var st = cls.map(function (k) { return { v: diff(s.status[k], s.t_ms), name: k }; });
    chart('chart-status', t, st, { fmt: si });
    var e5 = st.filter(function (l) { return l.name === '5xx'; })[0];
    big('status', '5xx ' + si(e5 ? last(e5.v) : null, '/s'));
    var p50 = s.p50_ms.slice(1), p99 = s.p99_ms.slice(1);
    chart('chart-latency', t, [{ v: p50, name: 'p50' }, { v: p99, name: 'p99' }], { fmt: ms });
    big('latency', 'p99 ' + ms(last(p99)));
    var conn = s.connections.slice(1);
    chart('chart-connections', t, [{ v: conn, name: 'connections' }], { area: 1, fmt: si });
    big('connections', si(last(conn)));
    var h = diff(s.cache_hits, s.t_ms, 1), m = diff(s.cache_misses, s.t_ms, 1);
    var ratio = h.map(function (v, i) { return v == null || m[i] == null || v + m[i] === 0 ? null : 100 * v / (v + m[i]); });
    chart('chart-cache', t, [{ v: ratio, name: 'hit %' }], { area: 1, max: 100, fmt: function (v) { return v.toFixed(0) + '%'; } });
    var lr = last(ratio);
    big('cache', lr == null ? '–' : lr.toFixed(1) + ' %');
    var rv = diff(s.revalidations, s.t_ms, 1), cc = diff(s.catalog_changes, s.t_ms, 1);
    chart('chart-changes', t, [{ v: rv, name: 'revalidations' }, { v: cc, name: 'catalog changes' }], { fmt: si });
    big('changes', si(last(rv)) + ' · ' + si(last(cc)));
  }

  // Device timeline: only the rows in view are drawn.
  var tl = { t0: 0, t1: 1, w: 600 };
  function tx(ms) { return NAMEW + (ms - tl.t0) / (tl.t1 - tl.t0) * (tl.w - NAMEW - 8); }
  function setDevices(list) {
    var coll = new Intl.Collator(undefined, { numeric: true });
    devs = list.slice().sort(function (a, b) { return coll.compare(a.device, b.device); });
    var lo = Infinity, hi = data.now_ms;
    devs.forEach(function (d) {
      d.lc = d.device.toLowerCase();
      d.spans.forEach(function (s) {
        s.a = s.first_ms != null ? s.first_ms : s.last_ms;
        s.b = s.last_ms != null ? s.last_ms : s.a;
      });
      d.timed = d.spans.filter(function (s) { return s.a != null; }).sort(function (a, b) { return a.a - b.a; });
      d.timed.forEach(function (s) { if (s.a < lo) lo = s.a; if (s.b > hi) hi = s.b; });
    });
    if (lo === Infinity) lo = hi - 864e5;
    var padd = (hi - lo) * 0.01 || 36e5;
    tl.t0 = lo - padd; tl.t1 = hi + padd;
    var names = devs.map(function (d) { return '<option value="' + esc(d.device) + '">'; }).join('');
    if (names !== namesKey) $('dev-list').innerHTML = namesKey = names;
    filter();
  }
  function filter() {
    var q = $('dev-filter').value.trim().toLowerCase();
    shown = q ? devs.filter(function (d) { return d.lc.indexOf(q) >= 0; }) : devs;
    $('dev-count').textContent = shown.length === devs.length ? devs.length + ' devices' : shown.length + ' of ' + devs.length + ' devices';
    $('tl-space').style.height = shown.length * ROW + 'px';
    drawAxis();
    drawRows();
  }
  function ticks() {
    var span = tl.t1 - tl.t0, steps = [1, 2, 7, 14, 30, 91, 182, 365], st = 365, out = [];
    for (var i = 0; i < steps.length; i++) if (span / (steps[i] * 864e5) <= (tl.w - NAMEW) / 70) { st = steps[i]; break; }
    var d = new Date(tl.t0); d.setHours(24, 0, 0, 0);
    for (; d.getTime() < tl.t1; d.setDate(d.getDate() + st)) out.push(d.getTime());
    return out;
  }
  function drawAxis() {
    tl.w = $('tl-body').clientWidth || 800;
    var svg = $('tl-axis'), out = [], nx = tx(data.now_ms);
    svg.setAttribute('viewBox', '0 0 ' + tl.w + ' 22');
    svg.setAttribute('width', tl.w);
    svg.setAttribute('height', 22);
    ticks().forEach(function (ms) {
      out.push('<line class=grid x1=' + tx(ms) + ' x2=' + tx(ms) + ' y1=14 y2=22></line><text x=' + tx(ms) + ' y=11 text-anchor=middle>' + esc(day(ms)) + '</text>');
    });
    out.push('<line class=now x1=' + nx + ' x2=' + nx + ' y1=12 y2=22></line><text x=' + (nx - 2) + ' y=21 text-anchor=end fill="#a40e26">now</text>');
    svg.innerHTML = out.join('');
  }
  function drawRows() {
    var t = performance.now(), body = $('tl-body'), svg = $('tl-rows');
    var first = Math.max(0, Math.floor(body.scrollTop / ROW) - 5);
    var end = Math.min(shown.length, first + Math.ceil((body.clientHeight || 460) / ROW) + 10);
    var h = (end - first) * ROW, out = [], nx = tx(data.now_ms);
    svg.style.top = first * ROW + 'px';
    svg.setAttribute('width', tl.w); svg.setAttribute('height', h);
    svg.setAttribute('viewBox', '0 0 ' + tl.w + ' ' + h);
    ticks().forEach(function (ms) { out.push('<line class=grid x1=' + tx(ms) + ' x2=' + tx(ms) + ' y1=0 y2=' + h + '></line>'); });
    for (var i = first; i < end; i++) {
      var d = shown[i], y = (i - first) * ROW, prev = null;
      out.push('<g data-i=' + i + (sel === d.device ? ' class=sel' : '') + '><rect class=bg x=0 y=' + y + ' width=' + tl.w + ' height=' + ROW + ' fill=transparent></rect>' +
        '<text tabindex=0 x=4 y=' + (y + 13) + '>' + esc(d.device.length > 26 ? d.device.slice(0, 25) + '…' : d.device) + '<title>' + esc(d.device) + '</title></text>');
      d.timed.forEach(function (s, k) {
        if (prev && s.a - prev.b > 36e5) {
          out.push('<rect class=gap x=' + tx(prev.b).toFixed(1) + ' y=' + (y + 3) + ' width=' + (tx(s.a) - tx(prev.b)).toFixed(1) +
            ' height=' + (ROW - 6) + '><title>gap: ' + esc(stamp(prev.b) + ' – ' + stamp(s.a)) + '</title></rect>');
        }
        var x0 = tx(s.a);
        out.push('<rect class=bar data-s=' + k + ' x=' + x0.toFixed(1) + ' y=' + (y + 4) + ' width=' + Math.max(1, tx(s.b) - x0).toFixed(1) +
          ' height=' + (ROW - 8) + '><title>' + esc(s.file + ': ' + stamp(s.a) + ' – ' + stamp(s.b) + ', ' + si(s.size, 'B')) + '</title></rect>');
        prev = s;
      });
      out.push('</g>');
    }
    out.push('<line class=now x1=' + nx + ' x2=' + nx + ' y1=0 y2=' + h + '></line>');
    svg.innerHTML = out.join('');
    $('timeline').setAttribute('data-draw-ms', (performance.now() - t).toFixed(1));
  }
  var rowsQueued = false;
  $('tl-body').addEventListener('scroll', function () {
    if (rowsQueued) return;
    rowsQueued = true;
    requestAnimationFrame(function () { rowsQueued = false; drawRows(); });
  });
  $('dev-filter').addEventListener('input', function () { $('tl-body').scrollTop = 0; filter(); });
  $('tl-rows').addEventListener('keydown', function (e) {
    if (e.key === 'Enter') e.target.dispatchEvent(new MouseEvent('click', { bubbles: true }));
  });
  $('tl-rows').addEventListener('click', function (e) {
    var g = e.target.closest('[data-i]');
    if (!g) return;
    var d = shown[+g.getAttribute('data-i')], k = e.target.getAttribute('data-s');
    var s = k != null ? d.timed[+k] : null, end = d.timed.length ? d.timed[d.timed.length - 1].b : data.now_ms;
    end = Math.min(Math.ceil((end + 1) / 6e4) * 6e4, data.now_ms);
    sel = d.device;
    drawRows();
    openLog(d.device, s ? Math.floor(s.a / 1000) * 1000 : end - 36e5, s ? Math.ceil((s.b + 1) / 1000) * 1000 : end);
  });
  window.addEventListener('resize', function () { if (data) { drawAxis(); drawRows(); } });

  // Log viewer: a span's lines, then optionally live ones.
  var logCtl = null, view = $('logview');
  function logBase(dev) { return '/logs/' + encodeURIComponent(dev) + '/.lines'; }
  function inputIso(id) { var v = $(id).value; return v ? new Date(v).toISOString() : ''; }
  function note(text) { $('log-note').textContent = text; }
  function openLog(dev, since, until) {
    $('log-dev').value = dev;
    $('log-since').value = localInput(since);
    $('log-until').value = localInput(until);
    loadLog();
    $('logs').scrollIntoView({ behavior: 'smooth', block: 'start' });
  }
  function stopLog() { if (logCtl) logCtl.abort(); logCtl = null; }
  function append(text, follow) {
    var atEnd = view.scrollTop + view.clientHeight >= view.scrollHeight - 4;
    view.appendChild(document.createTextNode(text));
    if (follow && view.textContent.length > LOG_MAX) view.textContent = view.textContent.slice(-LOG_MAX / 2);
    if (atEnd || follow) view.scrollTop = view.scrollHeight;
  }
  function stream(url, follow) {
    var ctl = logCtl = new AbortController(), got = 0, dec = new TextDecoder();
    return fetch(url, { signal: ctl.signal, cache: 'no-store' }).then(function (r) {
      if (!r.ok) return r.text().then(function (t) { throw new Error(r.status + ' ' + t.trim()); });
      var rd = r.body.getReader();
      function pump() {
        return rd.read().then(function (c) {
          if (c.done) { append(dec.decode(), follow); return got; }
          got += c.value.length;
          append(dec.decode(c.value, { stream: true }), follow);
          if (!follow && got > LOG_MAX) { ctl.abort(); note('showing the first ' + si(got, 'B') + '; download the span for the rest'); return -1; }
          return pump();
        });
      }
      return pump();
    });
  }
  function fail(e) { if (e.name !== 'AbortError') note('failed: ' + e.message); }
  function loadLog() {
    stopLog();
    var dev = $('log-dev').value.trim(), since = inputIso('log-since'), until = inputIso('log-until');
    if (!dev) return;
    if (since && until && until < since) { note('"until" is before "from"'); return; }
    var q = [since && 'since=' + encodeURIComponent(since), until && 'until=' + encodeURIComponent(until)].filter(Boolean).join('&');
    var url = logBase(dev) + (q ? '?' + q : '');
    $('log-dl').href = url;
    $('log-dl').setAttribute('download', dev + (since ? '_' + since.slice(0, 19).replace(/:/g, '') : '') + '.log');
    $('log-dl').hidden = false;
    view.textContent = '';
    note('loading…');
    stream(url, false).then(function (n) {
      if (n >= 0) note(n ? si(n, 'B') : 'no lines in this span');
      if ($('log-follow').checked) follow();
    }, fail);
  }
  function follow() {
    var dev = $('log-dev').value.trim();
    if (!dev) { $('log-follow').checked = false; return; }
    var now = data ? data.now_ms + (Date.now() - fetchedAt) : Date.now(), until = inputIso('log-until');
    var from = until && Date.parse(until) > now - 6e4 ? until : new Date(now).toISOString();
    if (view.textContent && from !== until) append('··· live lines from ' + stamp(Date.parse(from)) + ' ···\n', true);
    note('following from ' + stamp(Date.parse(from)) + '…');
    stream(logBase(dev) + '?since=' + encodeURIComponent(from) + '&follow', true).then(function () {
      note('the followed log ended');
      $('log-follow').checked = false;
    }, fail);
  }
  $('log-form').addEventListener('submit', function (e) { e.preventDefault(); loadLog(); });
  $('log-follow').addEventListener('change', function () {
    if (this.checked) { stopLog(); follow(); } else { stopLog(); note('stopped following'); }
  });

  // Tilesets and their coverage at a chosen zoom, fetched when the picture comes into view.
  function drawTilesets(list) {
    $('ts-count').textContent = list.length;
    if (covObs) covObs.disconnect();
    covDone = {};
    $('ts-grid').innerHTML = list.map(function (t) {
      var z = zoomOf[t.name], opts = '';
      if (z == null || z < t.minzoom || z > t.maxzoom) z = zoomOf[t.name] = Math.max(t.minzoom, Math.min(t.maxzoom, 4));
      for (var i = t.minzoom; i <= t.maxzoom; i++) opts += '<option' + (i === z ? ' selected' : '') + '>' + i + '</option>';
      var when = Date.parse(t.last_change);
      return '<div class=ts><svg id="coverage-' + esc(t.name) + '" data-name="' + esc(t.name) + '" viewBox="0 0 1 1"></svg><div>' +
        '<a href="' + esc(t.preview) + '"><b>' + esc(t.name) + '</b></a> <small><a href="' + esc(t.tilejson) + '">TileJSON</a></small><br>' +
        esc(t.source) + ' ' + esc(t.format) + ' · z' + t.minzoom + '–' + t.maxzoom + '<br>' + Number(t.tile_count).toLocaleString() + ' tiles · ' +
        '<span title="' + esc(t.last_change || '') + '">' + (when ? 'changed ' + ago(when) : '') + '</span><br>' +
        '<label>coverage at z <select data-name="' + esc(t.name) + '">' + opts + '</select></label> <small></small></div></div>';
    }).join('');
    covObs = 'IntersectionObserver' in window ? new IntersectionObserver(function (es) {
      es.forEach(function (e) { if (e.isIntersecting) { covObs.unobserve(e.target); coverage(e.target); } });
    }, { rootMargin: '200px' }) : null;
    Array.prototype.forEach.call(document.querySelectorAll('#ts-grid svg'), function (s) { covObs ? covObs.observe(s) : coverage(s); });
  }
  function coverage(svg) {
    var name = svg.getAttribute('data-name'), z = zoomOf[name], info = svg.parentNode.querySelector('small:last-child');
    info.textContent = 'loading…';
    fetch('/console/coverage/' + encodeURIComponent(name) + '?z=' + z).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) {
        if (!r.ok) throw new Error(j.error || 'HTTP ' + r.status);
        return j;
      });
    }).then(function (c) {
      if (zoomOf[name] !== c.z) return;
      var w = c.x1 - c.x0 + 1, h = c.y1 - c.y0 + 1, d = [];
      if (!(w > 0 && h > 0)) { svg.innerHTML = ''; info.textContent = 'no tiles at z' + c.z; return; }
      c.tiles.forEach(function (p) { d.push('M' + (p[0] - c.x0) + ' ' + (p[1] - c.y0) + 'h1v1h-1z'); });
      // Small zooms show the whole world around the extent; larger ones the extent alone.
      var world = 1 << c.z, S = world <= 32 ? world : Math.max(w, h);
      svg.setAttribute('viewBox', world <= 32 ? -c.x0 + ' ' + -c.y0 + ' ' + S + ' ' + S : (w - S) / 2 + ' ' + (h - S) / 2 + ' ' + S + ' ' + S);
      svg.setAttribute('data-tiles', c.tiles.length);
      svg.innerHTML = '<rect class="ext' + (c.extent_only ? ' only' : '') + '" width=' + w + ' height=' + h + '></rect><path shape-rendering=crispEdges d="' + d.join('') + '"></path><title>z' + c.z + ': ' + c.tiles.length + ' tiles in x ' + c.x0 + '–' + c.x1 + ', y ' + c.y0 + '–' + c.y1 + '</title>';
      info.textContent = c.extent_only ? w + '×' + h + ' extent (archive)' :
        c.tiles.length.toLocaleString() + ' of ' + (w * h).toLocaleString() + (c.truncated ? ' (first ones)' : '');
      info.className = c.truncated ? 'warn' : '';
    }).catch(function (e) { svg.innerHTML = ''; info.textContent = e.message; });
  }
  $('ts-grid').addEventListener('change', function (e) {
    var name = e.target.getAttribute('data-name');
    if (!name) return;
    zoomOf[name] = +e.target.value;
    coverage(e.target.closest('.ts').querySelector('svg'));
  });

  function drawRoots(d) {
    $('roots').hidden = !d.roots && !d.doctor;
    $('roots-table').hidden = !d.roots;
    $('roots-table').tBodies[0].innerHTML = (d.roots || []).map(function (r) {
      return '<tr><td>' + esc(r.kind) + '<td>' + esc(r.path) + '<td>' + esc(r.fs) + (r.shared ? ' (shared)' : '') + '<td>' + esc(r.delivery) +
        '<td>' + esc(r.why || '') + '<td>' + esc(r.watcher) + '<td class="n' + (r.unwatched_dirs ? ' warn' : '') + '">' + (r.unwatched_dirs || 0);
    }).join('');
    $('doctor-h').hidden = $('doctor').hidden = !d.doctor;
    $('doctor').innerHTML = !d.doctor ? '' : d.doctor.map(function (l) { return '<li>' + esc(l); }).join('') || '<li>no findings';
  }

  function state(text, bad) { var s = $('state'); s.textContent = text; s.className = bad ? 'bad' : ''; }
  function update(d) {
    if (!data) reveal();
    data = d;
    var up = d.up_s, u = up < 3600 ? Math.floor(up / 60) + ' min' : up < 172800 ? Math.floor(up / 3600) + ' h ' + Math.floor(up % 3600 / 60) + ' min' : Math.floor(up / 86400) + ' d';
    state((d.ready ? 'ready' : 'reconciling the catalog') + ' · up ' + u + ' · updated ' + hhmm(d.now_ms) + ':' + pad(new Date(d.now_ms).getSeconds()), !d.ready);
    $('live').hidden = !d.series;
    if (d.series) drawLive(d.series);
    drawRoots(d);
    if (devKey) { drawAxis(); drawRows(); }
    var tk = JSON.stringify(d.tilesets || []);
    if (tk !== tsKey) { tsKey = tk; drawTilesets(d.tilesets || []); }
  }
  function poll() {
    fetch('/console/data.json', { cache: 'no-store' }).then(function (r) {
      if (!r.ok) throw new Error('HTTP ' + r.status);
      return r.json();
    }).then(function (d) {
      fetchedAt = Date.now();
      update(d);
      // The timeline is drawn against the figures' clock: devices after them.
      if (!devicesStarted) { devicesStarted = true; pollDevices(); }
    }).catch(function (e) {
      state('data.json failed at ' + hhmm(Date.now()) + ': ' + e.message, true);
    }).then(function () { setTimeout(poll, POLL_MS); });
  }
  // The devices' spans change with the logs, not every few seconds, and
  // are the largest part: read once a minute (a 304 while unchanged).
  function pollDevices() {
    fetch('/console/devices.json', { cache: 'no-cache' }).then(function (r) {
      if (!r.ok) throw new Error('HTTP ' + r.status);
      return r.json();
    }).then(function (d) {
      var dk = JSON.stringify(d.devices || []);
      if (dk !== devKey) { setDevices(d.devices || []); devKey = dk; }
    }).catch(function (e) {
      state('devices.json failed at ' + hhmm(Date.now()) + ': ' + e.message, true);
    }).then(function () { setTimeout(pollDevices, DEVICES_MS); });
  }
  poll();
})();
