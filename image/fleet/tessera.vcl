vcl 4.1;
# Varnish (7.1, Debian 12's) in front of a fleet of tessera nodes that serve
# the same tiles root. Tiles and TileJSON (/tiles/...) are cached; everything
# else (status page, listings, /metrics, /logs and their ?follow streams) is
# passed through, streamed. The nodes invalidate what changed with BAN (a
# regex over the URL) or PURGE (one URL), configured on each node with
#
#   [[caches]]
#   url = "http://VARNISH-HOST:6081"
#   protocol = "ban"                       # or "purge"
#   secret_header = "X-Tessera-Secret"     # optional, with secret_file
#   secret_file = "/etc/tessera/varnish-secret"
#
# WHAT TO EDIT (everything else can stay as it is):
#   1. The block between ">>> fleet: nodes" and "<<< fleet: nodes": one
#      `backend` per node (address and port of its `listen`), the same names
#      in `tessera_add_nodes` and `tessera_other_node`, and the addresses
#      tessera's BAN and PURGE requests come from in `acl tessera_nodes`.
#      (benches/fleet writes this block for its own nodes.)
#   2. The block between ">>> fleet: secret" and "<<< fleet: secret": the
#      nodes' secret (the content of their secret_file, without its newline),
#      or "" to rely on the ACL alone.
#
# Run it with, for example,
#   varnishd -a :6081 -f /etc/varnish/tessera.vcl -s malloc,1g
# Varnish's own gzip handling (parameter http_gzip_support, on by default)
# is neutralised below: requests go to the nodes with the client's own
# Accept-Encoding (normalised to "gzip" or none) and tessera's Vary:
# Accept-Encoding keeps the two variants of a vector tile apart, each with its
# own strong ETag; Varnish never compresses or decompresses a body.
# `-p http_gzip_support=off` does the same more simply.
#
# Headers added for the operator: X-Cache (HIT, MISS or PASS) and X-Backend
# (the node that produced the answer; on a HIT, the one that produced the
# cached copy). Remove them in vcl_deliver if they should not leave the site.

import std;
import directors;

# Health: a node is in rotation while GET /readyz answers 200 (tessera answers
# 503 until its first reconcile of the catalog is done). With these figures a
# node that dies leaves the rotation after 3 failed probes (about 1.5 s; the
# fetches that reach it meanwhile are retried on another node, see
# vcl_backend_error), and comes back after 3 good ones out of the last 5.
probe tessera_ready {
    .request =
        "GET /readyz HTTP/1.1"
        "Host: tessera"
        "User-Agent: varnish-probe"
        "Connection: close";
    .expected_response = 200;
    .interval = 500ms;
    .timeout = 400ms;
    .window = 5;
    .threshold = 3;
    .initial = 2;
}

# The round-robin director over the nodes (healthy ones only).
sub vcl_init {
    new fleet = directors.round_robin();
    call tessera_add_nodes;
}

# >>> fleet: nodes
backend node_a {
    .host = "127.0.0.2";
    .port = "8080";
    .probe = tessera_ready;
    .connect_timeout = 1s;
    .first_byte_timeout = 30s;
    .between_bytes_timeout = 60s;
}
backend node_b {
    .host = "127.0.0.3";
    .port = "8080";
    .probe = tessera_ready;
    .connect_timeout = 1s;
    .first_byte_timeout = 30s;
    .between_bytes_timeout = 60s;
}

# Who may BAN and PURGE: the nodes, as seen by Varnish. On one machine
# (loopback) a node's connection to 127.0.0.1 comes from 127.0.0.1 whatever
# address the node listens on, so 127.0.0.1 belongs here then.
acl tessera_nodes {
    "127.0.0.1";
    "127.0.0.2";
    "127.0.0.3";
}

sub tessera_add_nodes {
    fleet.add_backend(node_a);
    fleet.add_backend(node_b);
}

# The retry after a failed fetch goes to a healthy node other than the one
# that failed (bereq.http.X-Tessera-Failed holds its name).
sub tessera_other_node {
    if (bereq.http.X-Tessera-Failed != "node_a" && std.healthy(node_a)) {
        set bereq.backend = node_a;
    } elsif (bereq.http.X-Tessera-Failed != "node_b" && std.healthy(node_b)) {
        set bereq.backend = node_b;
    }
}
# <<< fleet: nodes

sub tessera_secret {
# >>> fleet: secret
    set req.http.X-Tessera-Secret-Want = "";
# <<< fleet: secret
}

sub vcl_recv {
    # --- invalidation from the nodes ---------------------------------------
    if (req.method == "BAN" || req.method == "PURGE") {
        if (client.ip !~ tessera_nodes) {
            return (synth(403, "Forbidden"));
        }
        call tessera_secret;
        if (req.http.X-Tessera-Secret-Want ~ "." &&
            req.http.X-Tessera-Secret != req.http.X-Tessera-Secret-Want) {
            return (synth(403, "Forbidden"));
        }
        if (req.method == "PURGE") {
            # One URL: the object for this URL (tiles are hashed on the URL
            # alone, see vcl_hash), all its variants.
            return (purge);
        }
        # tessera's regex over the URL path and query, e.g.
        #   ^/tiles/osm/3/4/5\.png(\?|$)     one tile
        #   ^(?:a|b)(\?|$)                  several
        #   ^/tiles/osm([/.?]|$)            a whole tileset (TileJSON too)
        # Tested against obj.http.x-tessera-url only, so the ban lurker can
        # apply it in the background and the ban list stays short.
        if (!req.http.X-Tessera-Ban || req.http.X-Tessera-Ban ~ "\s") {
            return (synth(400, "X-Tessera-Ban: one regex, no whitespace"));
        }
        if (std.ban("obj.http.x-tessera-url ~ " + req.http.X-Tessera-Ban)) {
            return (synth(200, "Banned"));
        }
        return (synth(400, "Bad ban: " + std.ban_error()));
    }

    call vcl_req_host;
    if (req.method == "PRI") {
        return (synth(405));
    }
    if (req.method != "GET" && req.method != "HEAD") {
        # OPTIONS (CORS preflights), and anything tessera may refuse itself.
        return (pass);
    }

    set req.backend_hint = fleet.backend();

    # Only tiles and TileJSON are cached; /tiles (the listing), /, /metrics,
    # /healthz, /readyz and /logs... go to a node every time. Logs, ?follow
    # streams above all, are passed and streamed (see vcl_backend_fetch and
    # vcl_deliver for their timeouts), never buffered.
    if (req.url !~ "^/tiles/") {
        if (req.url ~ "^/logs/" && req.url ~ "[?&]follow(=|&|$)") {
            set req.http.X-Tessera-Follow = "1";
        }
        return (pass);
    }
    # Answers that may depend on the caller are not shared. (tessera marks
    # answers for one caller `private`, which vcl_backend_response honours
    # too; a root whose cache_control is `public` could let these be cached,
    # at the operator's choice.)
    if (req.http.Authorization || req.http.Cookie) {
        return (pass);
    }
    # tessera's answers differ only between clients that accept gzip and
    # those that do not: one key each, whatever the client's exact header.
    if (req.http.Accept-Encoding ~ "(?i)(^|,)\s*(x-)?gzip\s*(,|$|;\s*q\s*=\s*(1|0?\.[0-9]*[1-9]))") {
        set req.http.Accept-Encoding = "gzip";
        set req.http.X-Tessera-Gzip = "1";
    } else {
        unset req.http.Accept-Encoding;
    }
    # Range, If-Range, If-None-Match and If-Modified-Since stay: Varnish
    # answers them from the cached object (206, 304), with tessera's strong
    # ETag and Last-Modified.
    return (hash);
}

sub vcl_hash {
    # A tile or an archive is the same whatever the Host: hashing the URL
    # alone lets one PURGE (whose Host is the cache's address) drop what
    # clients fetched under the public name. TileJSON names the Host in its
    # tile URLs (unless tessera's public_url is set), so everything else
    # keeps the Host (BAN, the default, reaches it either way).
    hash_data(req.url);
    if (req.url !~ "^/tiles/[^/?]+/[0-9]+/[0-9]+/[0-9]+\.[A-Za-z0-9]+(\?|$)" &&
        req.url !~ "^/tiles/[^/?]+\.pmtiles(\?|$)") {
        if (req.http.host) {
            hash_data(req.http.host);
        } else {
            hash_data(server.ip);
        }
    }
    return (lookup);
}

sub vcl_purge {
    return (synth(200, "Purged"));
}

sub vcl_backend_fetch {
    if (bereq.retries > 0) {
        call tessera_other_node;
    }
    unset bereq.http.X-Tessera-Failed;
    # With http_gzip_support on, Varnish asks every cacheable fetch for gzip;
    # give the node the client's own (normalised) Accept-Encoding instead.
    if (!bereq.uncacheable) {
        if (bereq.http.X-Tessera-Gzip) {
            set bereq.http.Accept-Encoding = "gzip";
        } else {
            unset bereq.http.Accept-Encoding;
        }
    }
    unset bereq.http.X-Tessera-Gzip;
    if (bereq.http.X-Tessera-Follow) {
        # A followed log may be silent for long: no between-bytes limit
        # worth the name.
        set bereq.between_bytes_timeout = 1d;
    }
    unset bereq.http.X-Tessera-Follow;
    if (bereq.method == "GET") {
        unset bereq.body;
    }
    return (fetch);
}

sub vcl_backend_error {
    # The node could not be reached or failed before answering (connection
    # refused, reset, timeout): once, another node. A request that had
    # started to stream its body to the client cannot be retried.
    if (bereq.retries < 1) {
        set bereq.http.X-Tessera-Failed = beresp.backend.name;
        return (retry);
    }
    call vcl_builtin_backend_error;
    return (deliver);
}

sub vcl_backend_response {
    # A node that answers 502/503 (shutting down, over its connection limit)
    # gets the same second chance for GET and HEAD, unless streaming a log.
    if ((beresp.status == 502 || beresp.status == 503) && bereq.retries < 1 &&
        (bereq.method == "GET" || bereq.method == "HEAD") &&
        bereq.url !~ "[?&]follow(=|&|$)") {
        set bereq.http.X-Tessera-Failed = beresp.backend.name;
        return (retry);
    }
    set beresp.http.X-Backend = beresp.backend.name;
    # Never recompress or decompress: tessera's bodies, ETags and Vary as sent.
    set beresp.do_gzip = false;
    set beresp.do_gunzip = false;
    set beresp.do_stream = true;
    if (bereq.uncacheable) {
        return (deliver);
    }
    # For bans that the lurker can test without a request.
    set beresp.http.x-tessera-url = bereq.url;

    if (beresp.http.Set-Cookie || beresp.http.Vary == "*" ||
        beresp.http.Cache-Control ~ "(?i)(^|[,\s])(private|no-store)([,\s=]|$)" ||
        beresp.http.Surrogate-Control ~ "(?i)no-store") {
        # Hit-for-miss for a while: later requests go to a node at once.
        set beresp.ttl = 120s;
        set beresp.uncacheable = true;
        return (deliver);
    }
    if (beresp.http.Cache-Control ~ "(?i)(^|[,\s])no-cache([,\s=]|$)") {
        # no-cache (TileJSON, tessera's default for JSON): stored, but
        # revalidated with the node on every request (a cheap 304 with
        # tessera's ETag). Concurrent requests for it wait for each other's
        # revalidation: fine for TileJSON, one per map load.
        set beresp.ttl = 0s;
        set beresp.grace = 0s;
        set beresp.keep = 1h;
        return (deliver);
    }
    if (beresp.ttl <= 0s) {
        set beresp.ttl = 120s;
        set beresp.uncacheable = true;
        return (deliver);
    }
    # TTL from tessera's Cache-Control (max-age, s-maxage). Grace: an expired
    # tile is served (once refetching in the background) for 10 s more. Keep:
    # an expired tile stays an hour to be revalidated with its ETag (304)
    # rather than fetched again. Invalidation (BAN/PURGE) removes objects for
    # good: grace never serves a banned tile.
    set beresp.grace = 10s;
    set beresp.keep = 1h;
    return (deliver);
}

sub vcl_deliver {
    unset resp.http.x-tessera-url;
    if (obj.uncacheable) {
        set resp.http.X-Cache = "PASS";
    } elsif (obj.hits > 0) {
        set resp.http.X-Cache = "HIT";
    } else {
        set resp.http.X-Cache = "MISS";
    }
    if (req.http.X-Tessera-Follow) {
        # The whole stream may last days.
        set sess.send_timeout = 1d;
    }
    return (deliver);
}

sub vcl_synth {
    if (req.method == "BAN" || req.method == "PURGE") {
        set resp.http.Content-Type = "text/plain; charset=utf-8";
        set resp.body = resp.reason + {"
"};
        return (deliver);
    }
}
