/* tests/fuzz/fuzz_parser.c — libFuzzer target for the native packet parser and flow engine.
 *
 * Built by tests/fuzz/parser_fuzz.py with clang -fsanitize=fuzzer,address,undefined
 * -fno-sanitize-recover=all. It includes native/engine.c itself (not a copy), so the code
 * under test is exactly what the extension compiles: link_layer.h and xdp/flow_parse.h parse
 * each packet, and engine.c's step() applies it to a real flow table (flow_table.c) with
 * xdp/flow_update.h's rules, exporting on idle/active timeouts, FIN/RST and eviction.
 *
 * Input layout (so that one input is a short packet train, which reaches flow updates and
 * exports and not only the parser):
 *
 *     byte 0          bits 0-6: link type, index into mld_supported_dlts (modulo its length)
 *                     bit 7: flood mode (below)
 *     then records    u8 gap   time since the previous packet: (gap & 31) << (gap >> 5) ms
 *                     u16 len  little-endian captured length
 *                     len bytes of the packet (the last record takes what is left)
 *
 * Flood mode applies each parsed packet 1 + ((gap & 31) << 7) times (at most 5,000 in all)
 * with its source port (or, without ports, its source address) varied, to a table of 4,500
 * flows: one input then grows the table past its first 4,096 nodes, fills it and evicts
 * from it, probes long collision chains and removes from the middle of the LRU list, which
 * a train of 64 packets never reaches.
 *
 * Each packet is copied into a heap buffer of exactly its captured length, so AddressSanitizer
 * reports a parser that reads even one byte past the end (the engine hands the parser
 * libpcap's buffer, whose slack would hide that). Beyond the sanitizers the target checks the
 * invariants a parsed packet and an exported flow must keep, and abort()s when one breaks.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../native/engine.c"

#define FUZZ_MAX_FLOWS 8  /* small: eviction happens within one input */
#define FUZZ_BATCH 4      /* small: the output fills up and packets stay pending */
#define FUZZ_MAX_PACKETS 64
#define FUZZ_FLOOD_MAX_FLOWS 4500 /* past the first 4,096 nodes, then full: eviction */
#define FUZZ_FLOOD_MAX_APPLIES 5000 /* per input: past the table's first 4,096 nodes, yet fast */

static void check(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "fuzz_parser: invariant broken: %s\n", what);
        abort();
    }
}

static void check_pkt(const struct mld_pkt *pkt)
{
    check(pkt->ip_version == 4 || pkt->ip_version == 6, "parsed packet has IP version 4 or 6");
    check(pkt->payload_len <= pkt->ip_len, "payload_len <= ip_len");
    check(pkt->dns_qname_len <= 255, "dns_qname_len <= 255");
    check(pkt->has_l4 <= 1, "has_l4 is 0 or 1");
    /* Fragments (issue 19, finding 3): a byte range only for a fragment, never inverted. */
    if (pkt->frag & MLD_FRAG_IS)
        check(pkt->frag_off <= pkt->frag_end, "fragment range is [frag_off, frag_end)");
    else
        check(pkt->frag == 0 && pkt->frag_id == 0 && pkt->frag_off == 0 && pkt->frag_end == 0,
              "no fragment fields without MLD_FRAG_IS");
    /* Handshake evidence (issue 19, finding 1) reads seq/ack only from a TCP header. */
    if (pkt->protocol != MLD_PROTO_TCP)
        check(pkt->tcp_seq == 0 && pkt->tcp_ack == 0, "no TCP seq/ack without TCP");
}

static void check_events(const struct mld_engine *e)
{
    size_t i;

    for (i = 0; i < e->out_n; i++) {
        const struct mld_flow_state *st = &e->out[i].state;

        check(st->end_reason >= MLD_END_FIN && st->end_reason <= MLD_END_CAPTURE_END,
              "exported flow has an end reason");
        check(st->dir[0].packets + st->dir[1].packets > 0, "exported flow has packets");
        check(st->last_ts_ns >= st->first_ts_ns, "flow ends after it starts");
        check(e->out[i].key.pad == 0, "key padding is zero");
        check(st->tiny_frag_count <= st->frag_count && st->overlap_frag_count <= st->frag_count,
              "tiny and overlapping fragments are counted among the fragments");
        check(st->frag_count <= st->dir[0].packets + st->dir[1].packets,
              "no more fragments than packets");
        if (st->flags & MLD_F_HS_VERIFIED)
            check((st->flags & (MLD_F_INIT_SYN | MLD_F_SYNACK)) ==
                          (MLD_F_INIT_SYN | MLD_F_SYNACK) &&
                      !(st->flags & MLD_F_HS_CONFLICT) && e->out[i].key.protocol == MLD_PROTO_TCP,
                  "a verified handshake saw the SYN and the SYN-ACK, and no conflict");
        if (st->flags & MLD_F_SYNACK)
            check(st->flags & MLD_F_INIT_SYN, "a SYN-ACK counts only after the initiator's SYN");
    }
}

static void drain(struct mld_engine *e)
{
    check_events(e);
    mld_engine_consume(e, e->out_n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct mld_flow_config cfg = {
        .idle_timeout_ns = 2000000000ULL,    /* 2 s */
        .active_timeout_ns = 10000000000ULL, /* 10 s */
    };
    size_t n_dlts = sizeof(mld_supported_dlts) / sizeof(mld_supported_dlts[0]);
    struct mld_engine e;
    __u64 ts = 1700000000ULL * 1000000000ULL;
    size_t off = 1;
    int packets = 0;
    int flood;
    unsigned applies = 0;
    struct mld_pkt parsed;

    if (size < 1)
        return 0;
    flood = (data[0] & 0x80) != 0;
    if (mld_engine_init(&e, &cfg, flood ? FUZZ_FLOOD_MAX_FLOWS : FUZZ_MAX_FLOWS, FUZZ_BATCH) != 0)
        abort();
    e.dlt = mld_supported_dlts[(data[0] & 0x7F) % n_dlts];

    while (off < size && packets < FUZZ_MAX_PACKETS) {
        __u8 gap = data[off++];
        size_t len = size - off;
        __u8 *buf;
        int rc;

        if (size - off >= 2) {
            size_t want = (size_t)data[off] | ((size_t)data[off + 1] << 8);

            off += 2;
            len = size - off < want ? size - off : want;
        } else {
            off = size;
            len = 0;
        }
        /* Exactly len bytes: one byte past the end is a heap overflow ASan sees. */
        buf = malloc(len > 0 ? len : 1);
        if (buf == NULL)
            abort();
        if (len > 0)
            memcpy(buf, data + off, len);
        off += len;
        ts += ((__u64)(gap & 31) << (gap >> 5)) * 1000000ULL;

#ifdef FUZZ_PLANTED_BUG
        /* Self-test of the harness only (test_fuzz_smoke.py builds it with this defined): a
         * read one byte past a packet that starts with "PLANTED" must be reported. */
        if (len >= 7 && memcmp(buf, "PLANTED", 7) == 0) {
            volatile __u8 past = buf[len];
            (void)past;
        }
#endif
        memset(&e.pkt, 0, sizeof(e.pkt));
        rc = mld_parse_link(e.dlt, buf, buf + len, &e.pkt);
        free(buf);
        /* Codes past MLD_PARSE_MALFORMED may come (the engine counts any non-OK one as a
         * parse error); a negative one is a bug. */
        check(rc >= MLD_PARSE_OK, "parser returns a non-negative code");
        if (rc == MLD_PARSE_OK)
            check_pkt(&e.pkt);
        e.pkt.ts_ns = ts;
        parsed = e.pkt;
        {
            unsigned reps = flood && rc == MLD_PARSE_OK ? 1u + ((unsigned)(gap & 31) << 7) : 1u;
            unsigned r;

            for (r = 0; r < reps && applies < FUZZ_FLOOD_MAX_APPLIES; r++, applies++) {
                int st;

                if (r > 0) {
                    e.pkt = parsed;
                    if (parsed.protocol == MLD_PROTO_TCP || parsed.protocol == MLD_PROTO_UDP) {
                        e.pkt.sport = (__u16)(parsed.sport + r);
                    } else {
                        e.pkt.saddr[15] ^= (__u8)r;
                        e.pkt.saddr[14] ^= (__u8)(r >> 8);
                    }
                }
                e.pending = 1;
                e.pending_ip = rc == MLD_PARSE_OK;
                for (;;) {
                    st = step(&e, e.batch_size);
                    if (st < 0)
                        abort(); /* out of memory */
                    if (st == 0)
                        break;
                    check(e.out_n >= e.batch_size, "step stops only when the output is full");
                    drain(&e);
                }
                check(e.table.live <= e.table.max_flows, "live flows <= max_flows");
                if (e.out_n >= e.batch_size)
                    drain(&e);
            }
        }
        packets++;
    }
    if (mld_engine_finish(&e) != 0)
        abort();
    check(e.table.live == 0, "finish exports every flow");
    drain(&e);
    mld_engine_free(&e);
    return 0;
}
