#!/usr/bin/env python3
"""The runtime's module graph, for checking its layering (issue 13).

    python3 scripts/modgraph.py [smache/src]

Prints, for each top-level module of smache/src (a file or a folder), the
other modules it names through `crate::` paths (tests excluded), then the
cycles among them (strongly connected components; there should be none).
A module's own folder is one node: a `mod.rs` and its children referring
to each other is not a cycle here.
"""
import os, re, sys, collections
root = sys.argv[1] if len(sys.argv) > 1 else 'smache/src'
edges = collections.defaultdict(set)
def top(path):
    rel = os.path.relpath(path, root)
    parts = rel[:-3].split(os.sep)
    if parts[0] in ('lib',): return 'lib'
    return parts[0]
def strip_tests(text):
    i = text.find('#[cfg(test)]\nmod tests')
    return text if i < 0 else text[:i]
for d, _, files in os.walk(root):
    for f in files:
        if not f.endswith('.rs'): continue
        p = os.path.join(d, f)
        src = strip_tests(open(p).read())
        src = re.sub(r'//[^\n]*', '', src)
        me = top(p)
        for m in re.finditer(r'crate::\{([^}]*)\}', src):
            for name in re.findall(r'(?:^|,)\s*([a-z_]+)', m.group(1)):
                edges[me].add(name)
        for m in re.finditer(r'crate::([a-z_]+)', src):
            edges[me].add(m.group(1))
mods = sorted(edges)
for m in mods:
    deps = sorted(x for x in edges[m] if x != m and x in edges or x in ('sync','shutdown','runtime','entity','envelope','error','spec','flight','registry','key'))
    print(f"{m:10} -> {' '.join(d for d in deps if d != m)}")
# cycles (SCCs)
graph = {m: {x for x in edges[m] if x in edges and x != m} for m in edges}
index = {}; low = {}; stack = []; on = set(); sccs = []; i = [0]
def sc(v):
    index[v] = low[v] = i[0]; i[0] += 1; stack.append(v); on.add(v)
    for w in graph[v]:
        if w not in index: sc(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(comp)
for v in graph:
    if v not in index: sc(v)
print("cycles:", sccs)
