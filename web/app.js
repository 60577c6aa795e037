// signet's live graph of who talks to whom. Reads /api/graph every 2 s and
// draws it with cytoscape (/graph/lib.js): pods as nodes inside their
// namespace, outside addresses and the node itself in groups of their own,
// flows as edges (allowed green, denied red, mixed green dashed; width by
// bytes, log scale). Positions stay where they are between updates: every
// node keeps its slot in its group's grid; new nodes take free slots.
//
// For tests the page reports what it drew: body[data-rendered] = "<n> nodes
// <m> edges", body[data-updates], body[data-moved] (pre-existing nodes that
// an update moved: always 0), and #signet-drawn with one line per element,
// read back from cytoscape's computed style.
(function () {
  'use strict';

  var ALLOWED = '#2e7d32';
  var DENIED = '#c62828';
  var POLL_MS = 2000;
  var OUTSIDE = '(outside)';
  var NODE = '(node)';
  var UNKNOWN = '(unknown)';

  var statusEl = document.getElementById('status');
  var panel = document.getElementById('panel');
  var drawnEl = document.getElementById('signet-drawn');

  // Edges arc (more for longer ones), so that an edge along a row of nodes
  // does not run through the nodes between its ends.
  function arc(e) {
    var a = e.source().position(), b = e.target().position();
    var d = Math.sqrt((a.x - b.x) * (a.x - b.x) + (a.y - b.y) * (a.y - b.y));
    return Math.min(140, Math.max(18, 0.18 * d));
  }

  var cy = cytoscape({
    container: document.getElementById('cy'),
    boxSelectionEnabled: false,
    minZoom: 0.1,
    maxZoom: 2,
    style: [
      { selector: 'node', style: {
        'label': 'data(label)', 'font-size': 10, 'width': 18, 'height': 18,
        'text-valign': 'bottom', 'text-margin-y': 3, 'background-color': '#78909c' } },
      { selector: 'node[kind = "pod"][?local]', style: { 'background-color': '#1565c0' } },
      { selector: 'node[kind = "address"]', style: { 'shape': 'diamond', 'background-color': '#8d6e63' } },
      { selector: 'node[kind = "node"]', style: { 'shape': 'round-rectangle', 'background-color': '#455a64' } },
      { selector: 'node[kind = "unknown"]', style: { 'background-color': '#bdbdbd' } },
      { selector: ':parent', style: {
        'background-color': '#eceff1', 'background-opacity': 0.6, 'border-width': 1, 'border-color': '#90a4ae',
        'shape': 'round-rectangle', 'padding': 14, 'text-valign': 'top', 'text-halign': 'center',
        'font-size': 12, 'font-weight': 'bold', 'text-margin-y': -2 } },
      { selector: 'edge', style: {
        'width': 'data(width)', 'line-color': 'data(color)', 'target-arrow-color': 'data(color)',
        'line-style': 'data(lineStyle)', 'target-arrow-shape': 'triangle', 'arrow-scale': 0.8,
        'curve-style': 'unbundled-bezier', 'control-point-weights': 0.5,
        'control-point-distances': arc, 'opacity': 0.9 } },
      { selector: 'edge:loop', style: { 'curve-style': 'bezier' } },
      { selector: 'node:selected', style: { 'border-width': 3, 'border-color': '#ffb300' } },
      { selector: 'edge:selected', style: { 'overlay-color': '#ffb300', 'overlay-opacity': 0.35, 'overlay-padding': 4 } }
    ]
  });

  var updates = 0;
  var moved = 0;
  var current = { nodes: new Map(), edges: new Map() };  // original JSON objects by cytoscape id

  function edgeWidth(bytes) {
    var b = Math.max(0, Number(bytes) || 0);
    return Math.round(Math.min(12, 1 + 1.5 * Math.log10(1 + b)) * 10) / 10;
  }

  function edgeLook(verdict) {
    if (verdict === 'denied') return { color: DENIED, lineStyle: 'solid' };
    if (verdict === 'mixed') return { color: ALLOWED, lineStyle: 'dashed' };
    return { color: ALLOWED, lineStyle: 'solid' };
  }

  // The graph JSON as cytoscape elements: groups, leaves and edges by id.
  function model(g) {
    var groups = new Map();
    var nodes = new Map();
    var edges = new Map();
    function group(key, label) {
      if (!groups.has(key)) groups.set(key, { group: 'nodes', data: { id: 'g:' + key, key: key, label: label, kind: 'group' } });
      return 'g:' + key;
    }
    (g.pods || []).forEach(function (p) {
      var parent = group(p.namespace, p.namespace);
      nodes.set('n:' + p.id, { group: 'nodes', data: {
        id: 'n:' + p.id, key: p.id, parent: parent, label: p.name, kind: 'pod', local: !!p.local }, src: p });
    });
    (g.peers || []).forEach(function (p) {
      var parent = p.kind === 'node'
        ? group(NODE, 'node ' + (g.node || ''))
        : group(OUTSIDE, 'outside the cluster');
      var label = p.kind === 'node' ? 'this node' + (p.address ? ' (' + p.address + ')' : '') : (p.address || p.id);
      nodes.set('n:' + p.id, { group: 'nodes', data: {
        id: 'n:' + p.id, key: p.id, parent: parent, label: label, kind: p.kind === 'node' ? 'node' : 'address' }, src: p });
    });
    (g.edges || []).forEach(function (e) {
      [e.source, e.target].forEach(function (end) {
        if (!nodes.has('n:' + end)) {
          nodes.set('n:' + end, { group: 'nodes', data: {
            id: 'n:' + end, key: end, parent: group(UNKNOWN, 'unknown'), label: end, kind: 'unknown' }, src: { id: end } });
        }
      });
      var look = edgeLook(e.verdict);
      edges.set('e:' + e.id, { group: 'edges', data: {
        id: 'e:' + e.id, key: e.id, source: 'n:' + e.source, target: 'n:' + e.target, verdict: e.verdict,
        color: look.color, lineStyle: look.lineStyle, width: edgeWidth(e.bytes) }, src: e });
    });
    return { groups: groups, nodes: nodes, edges: edges };
  }

  function leafPositions() {
    var out = new Map();
    cy.nodes().forEach(function (n) {
      if (!n.isParent()) out.set(n.id(), { x: n.position('x'), y: n.position('y') });
    });
    return out;
  }

  // Layout: each group is a grid of slots, groups flow left to right in rows.
  // A node keeps its slot for as long as it exists; a new node takes its
  // group's first free slot, a new group goes after the last one. So nothing
  // already drawn ever moves, and the same graph always looks the same.
  var SLOT = 80;
  var slots = new Map();  // group id -> { x, y, cols, next, free: [] }
  var flow = { x: 0, y: 0, rowHeight: 0, width: 0 };
  var slotOf = new Map(); // node id -> [group id, index]

  function groupSlots(gid, members) {
    var s = slots.get(gid);
    if (s) return s;
    var cols = Math.max(2, Math.ceil(Math.sqrt(members)));
    var rows = Math.ceil(members / cols) + 1;  // one spare row to grow into
    var w = cols * SLOT + 40;
    var h = rows * SLOT + 40;
    if (flow.x > 0 && flow.x + w > flow.width) {
      flow.x = 0;
      flow.y += flow.rowHeight;
      flow.rowHeight = 0;
    }
    s = { x: flow.x + SLOT / 2, y: flow.y + SLOT / 2, cols: cols, next: 0, free: [] };
    flow.x += w + 50;
    flow.rowHeight = Math.max(flow.rowHeight, h + 50);
    slots.set(gid, s);
    return s;
  }

  function releaseSlot(id) {
    var at = slotOf.get(id);
    if (!at) return;
    slotOf.delete(id);
    var s = slots.get(at[0]);
    if (s) s.free.push(at[1]);
  }

  function groupOrder(a, b) {
    var ka = a.data('key'), kb = b.data('key');
    var ra = ka.charAt(0) === '(' ? 1 : 0, rb = kb.charAt(0) === '(' ? 1 : 0;
    return ra - rb || (ka < kb ? -1 : ka > kb ? 1 : 0);
  }

  function place(added) {
    var groups = cy.nodes().filter(function (n) { return n.data('kind') === 'group'; }).sort(groupOrder);
    if (!flow.width) {
      // Rows about as wide as the first graph's groups laid side by side
      // would be tall: a roughly square picture.
      var total = 0;
      groups.forEach(function (g) { total += Math.max(2, Math.ceil(Math.sqrt(g.children().length))) * SLOT + 90; });
      flow.width = Math.max(400, total / Math.ceil(Math.sqrt(groups.length)) + 1);
    }
    groups.forEach(function (grp) {
      var fresh = grp.children().filter(function (n) { return added.has(n.id()); })
        .sort(function (a, b) { return a.data('label') < b.data('label') ? -1 : a.data('label') > b.data('label') ? 1 : 0; });
      if (!fresh.length) return;
      var s = groupSlots(grp.id(), grp.children().length);
      fresh.forEach(function (n) {
        s.free.sort(function (a, b) { return a - b; });
        var i = s.free.length ? s.free.shift() : s.next++;
        slotOf.set(n.id(), [grp.id(), i]);
        n.position({ x: s.x + (i % s.cols) * SLOT, y: s.y + Math.floor(i / s.cols) * SLOT });
      });
    });
  }

  // Fit the view to the graph until the user pans or zooms.
  var userViewport = false;
  var fitting = false;
  cy.on('viewport', function () { if (!fitting) userViewport = true; });
  function fit() {
    if (userViewport) return;
    fitting = true;
    cy.fit(undefined, 40);
    fitting = false;
  }

  function apply(g) {
    var want = model(g);
    var before = leafPositions();
    var added = new Set();
    cy.batch(function () {
      cy.edges().forEach(function (e) { if (!want.edges.has(e.id())) e.remove(); });
      var wanted = new Set(want.nodes.keys());
      want.groups.forEach(function (el) { wanted.add(el.data.id); });
      cy.nodes().forEach(function (n) {
        if (n.removed() || wanted.has(n.id())) return;
        n.descendants().forEach(function (d) { releaseSlot(d.id()); });
        releaseSlot(n.id());
        slots.delete(n.id());
        n.remove();  // a group takes its members along
      });
      want.groups.forEach(function (el) {
        var ex = cy.getElementById(el.data.id);
        if (ex.length) ex.data('label', el.data.label); else cy.add(el);
      });
      want.nodes.forEach(function (el, id) {
        var ex = cy.getElementById(id);
        if (ex.length && ex.data('parent') !== el.data.parent) {  // e.g. an unknown end became a known peer
          releaseSlot(id);
          ex.remove();
          ex = cy.collection();
        }
        if (ex.length) {
          ex.data({ label: el.data.label, kind: el.data.kind, local: el.data.local });
        } else {
          cy.add({ group: 'nodes', data: el.data, position: { x: 0, y: 0 } });
          added.add(id);
        }
      });
      want.edges.forEach(function (el, id) {
        var ex = cy.getElementById(id);
        if (ex.length && (ex.source().id() !== el.data.source || ex.target().id() !== el.data.target)) {
          ex.remove();
          ex = cy.collection();
        }
        if (ex.length) {
          ex.data({ verdict: el.data.verdict, color: el.data.color, lineStyle: el.data.lineStyle, width: el.data.width });
        } else {
          cy.add({ group: 'edges', data: el.data });
        }
      });
      // Groups left without members go too.
      cy.nodes().forEach(function (n) {
        if (n.data('kind') === 'group' && n.children().length === 0) {
          slots.delete(n.id());
          n.remove();
        }
      });
    });
    current.nodes = new Map();
    want.nodes.forEach(function (el, id) { current.nodes.set(id, el.src); });
    current.edges = new Map();
    want.edges.forEach(function (el, id) { current.edges.set(id, el.src); });

    if (added.size) {
      place(added);
      fit();
    }

    before.forEach(function (p, id) {
      var n = cy.getElementById(id);
      if (n.length && !added.has(id) &&
          (Math.abs(n.position('x') - p.x) > 0.5 || Math.abs(n.position('y') - p.y) > 0.5)) moved++;
    });
    updates++;
    report(g);
    refreshPanel();
  }

  function hex(c) {
    var m = /^rgb\((\d+),\s*(\d+),\s*(\d+)\)$/.exec(c || '');
    if (!m) return c;
    return '#' + [m[1], m[2], m[3]].map(function (v) { return ('0' + Number(v).toString(16)).slice(-2); }).join('');
  }

  // What was drawn, read back from cytoscape.
  function report(g) {
    var lines = [];
    var leaves = 0;
    cy.nodes().forEach(function (n) {
      if (n.isParent() || n.data('kind') === 'group') {
        lines.push('group ' + n.data('key') + ' label=' + JSON.stringify(n.data('label')));
      } else {
        leaves++;
        var parent = n.parent();
        lines.push('node ' + n.data('key') + ' parent=' + (parent.length ? parent.data('key') : '-') +
          ' kind=' + n.data('kind'));
      }
    });
    cy.edges().forEach(function (e) {
      lines.push('edge ' + e.data('key') + ' color=' + hex(e.style('line-color')) +
        ' width=' + parseFloat(e.style('width')) + ' style=' + e.style('line-style') +
        ' verdict=' + e.data('verdict') + ' source=' + e.source().data('key') + ' target=' + e.target().data('key'));
    });
    lines.sort();
    drawnEl.textContent = lines.join('\n') + '\n';
    document.body.dataset.rendered = leaves + ' nodes ' + cy.edges().length + ' edges';
    document.body.dataset.updates = String(updates);
    document.body.dataset.moved = String(moved);
    document.body.dataset.generatedAt = g.generatedAt || '';
    setStatus((g.node || '?') + ' · ' + leaves + ' endpoints · ' + cy.edges().length + ' edges · last ' +
      (g.windowSeconds || '?') + ' s · ' + (g.generatedAt || ''), false);
  }

  function setStatus(text, error) {
    statusEl.textContent = text;
    statusEl.className = error ? 'error' : '';
  }

  // ---- side panel (built with textContent only: data never becomes markup)

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function row(table, k, v, cls) {
    var tr = el('tr');
    tr.appendChild(el('th', k));
    tr.appendChild(el('td', v, cls));
    table.appendChild(tr);
  }

  function fmtBytes(n) {
    n = Number(n) || 0;
    var units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + ' ' + units[i];
  }

  function selection() {
    var m = /^#(edge|node)=(.*)$/.exec(location.hash);
    if (!m) return null;
    try { return { kind: m[1], key: decodeURIComponent(m[2]) }; } catch (err) { return null; }
  }

  function select(kind, key) {
    history.replaceState(null, '', kind ? '#' + kind + '=' + encodeURIComponent(key) : location.pathname);
    refreshPanel();
  }

  function refreshPanel() {
    var sel = selection();
    var id = sel ? (sel.kind === 'edge' ? 'e:' : 'n:') + sel.key : null;
    var src = sel ? (sel.kind === 'edge' ? current.edges : current.nodes).get(id) : null;
    cy.elements(':selected').unselect();
    panel.textContent = '';
    if (!src) {
      showPanel(false);
      delete panel.dataset.selected;
      return;
    }
    cy.getElementById(id).select();
    showPanel(true);
    panel.dataset.selected = sel.kind + ' ' + sel.key;
    var close = el('button', '×');
    close.title = 'close';
    close.addEventListener('click', function () { select(null); });
    panel.appendChild(close);
    if (sel.kind === 'edge') edgePanel(src); else nodePanel(src);
  }

  // The panel takes width from the graph: cytoscape must learn its new size.
  function showPanel(show) {
    if (panel.hidden === !show) return;
    panel.hidden = !show;
    cy.resize();
    fit();
  }

  function edgePanel(e) {
    panel.appendChild(el('h2', e.source + ' → ' + e.target));
    var t = el('table');
    row(t, 'verdict', e.verdict, e.verdict === 'denied' ? 'denied' : 'allowed');
    row(t, 'connections', e.connections);
    row(t, 'packets', e.packets);
    row(t, 'bytes', fmtBytes(e.bytes));
    panel.appendChild(t);
    panel.appendChild(el('h2', 'flows'));
    (e.flows || []).forEach(function (f) {
      var box = el('div', null, 'flow');
      var ft = el('table');
      row(ft, 'flow', (f.proto || '?') + (f.port ? '/' + f.port : ''));
      row(ft, 'verdict', f.verdict, f.verdict === 'denied' ? 'denied' : 'allowed');
      row(ft, 'policy', f.policy + (f.rule !== undefined && f.rule !== null && f.policy !== 'default-deny' ? ' (rule ' + f.rule + ')' : ''));
      row(ft, 'authenticated', f.authenticated ? 'yes' : 'no');
      row(ft, 'connections', f.connections);
      row(ft, 'bytes', fmtBytes(f.bytes));
      row(ft, 'last seen', f.lastSeen);
      box.appendChild(ft);
      panel.appendChild(box);
    });
  }

  function nodePanel(n) {
    panel.appendChild(el('h2', n.id));
    var t = el('table');
    if (n.namespace !== undefined) {
      row(t, 'namespace', n.namespace);
      row(t, 'name', n.name);
      row(t, 'on this node', n.local ? 'yes' : 'no');
      row(t, 'IPs', (n.ips || []).join(', '));
      Object.keys(n.labels || {}).sort().forEach(function (k) { row(t, 'label', k + '=' + n.labels[k]); });
    } else {
      row(t, 'kind', n.kind || 'unknown');
      row(t, 'address', n.address || '');
    }
    panel.appendChild(t);
  }

  cy.on('tap', 'edge', function (evt) { select('edge', evt.target.data('key')); });
  cy.on('tap', 'node', function (evt) {
    if (!evt.target.isParent()) select('node', evt.target.data('key'));
  });
  cy.on('tap', function (evt) { if (evt.target === cy) select(null); });
  window.addEventListener('hashchange', refreshPanel);

  // ---- polling: one request at a time, every POLL_MS

  function poll() {
    fetch('/api/graph', { cache: 'no-store' })
      .then(function (r) {
        if (!r.ok) throw new Error('HTTP ' + r.status);
        return r.json();
      })
      .then(apply)
      .catch(function (err) { setStatus('cannot load /api/graph: ' + err.message + ' (retrying)', true); })
      .then(function () { setTimeout(poll, POLL_MS); });
  }
  poll();
})();
