/* native/engine.h — the offline flow engine: pcap packets in, exported flows out.
 *
 * Plain C, no Python: flowengine.c wraps it. One engine owns one flow table and reads one
 * capture file at a time; flows carry over from file to file until mld_engine_finish().
 */
#ifndef MLD_ENGINE_H
#define MLD_ENGINE_H

#include <pcap/pcap.h>

#include "flow_table.h"

struct mld_engine_stats {
    __u64 packets;        /* records read */
    __u64 bytes;          /* their wire lengths (pcap len) */
    __u64 ip_packets;     /* parsed into a flow */
    __u64 parse_errors;   /* the parser could not follow them: the four reasons below */
    __u64 non_ip;
    __u64 flows_created;
    __u64 flows_exported;
    __u64 flows_evicted;
    __u64 files;          /* files opened */
    /* parse_errors by reason, as the XDP program counts them (struct mld_xdp_stats). */
    __u64 parse_truncated;
    __u64 parse_malformed;
    __u64 parse_bad_length;
    __u64 parse_ext_limit;
    __u64 fragments;      /* IP fragments parsed into a flow */
    __u64 tiny_fragments; /* of them MLD_FRAG_TINY */
    __u64 interim_exported; /* interim records (MLD_F_INTERIM), not in flows_exported */
};

struct mld_engine {
    struct mld_flow_config cfg;
    struct mld_table table;
    struct mld_engine_stats stats;
    size_t batch_size;
    /* Exported, not yet handed out. */
    struct mld_flow_event *out;
    size_t out_n;
    size_t out_cap;
    /* The open file. */
    pcap_t *pcap;
    int dlt;
    char *iobuf; /* stdio buffer of the open file (kept for the next file) */
    /* Classic pcap files are read in big blocks with pread() straight into rbuf and their
     * records parsed there (no stdio, no copy into libpcap's buffer); libpcap opens the
     * file (header, link type, snapshot) and takes over from the first record the fast
     * path does not vouch for (engine.c, fast_next), so errors are libpcap's. */
    int fast;           /* reading through rbuf */
    int fast_swapped;   /* the file's byte order is not ours */
    int fast_nsec;      /* nanosecond timestamps (else microseconds) */
    int fast_eof;       /* pread found the end of the file */
    __u32 fast_snap;    /* libpcap's snapshot length for the file */
    unsigned char *rbuf; /* MLD_RBUF_SIZE (kept for the next file) */
    size_t rlen, rpos;  /* bytes in rbuf; the next record's offset in it */
    long long roff;     /* file offset of rbuf[0] */
    /* A packet read and parsed but not yet applied (the output filled up first). */
    int pending;
    int pending_ip;
    struct mld_pkt pkt;
    char error[PCAP_ERRBUF_SIZE + 128];
};

#define MLD_IOBUF_SIZE (1u << 20) /* stdio buffer of the open capture */
#define MLD_RBUF_SIZE (4u << 20)  /* block buffer of the fast path (> 16 + any snapshot) */

/* Read status. */
#define MLD_READ_FULL 0  /* out holds batch_size events; call again */
#define MLD_READ_EOF 1   /* end of file */
#define MLD_READ_ERROR 2 /* libpcap failed mid-file; the message is in error */
#define MLD_READ_NOMEM 3

int mld_engine_init(struct mld_engine *e, const struct mld_flow_config *cfg, __u32 max_flows,
                    size_t batch_size);
void mld_engine_free(struct mld_engine *e);
/* Open a capture: 0 on success, -1 when libpcap cannot (error set), -2 when the link type is
 * unsupported (error holds its name). */
int mld_engine_open(struct mld_engine *e, const char *path);
/* Read packets until batch_size events wait in out, the file ends, or it fails. */
int mld_engine_read(struct mld_engine *e);
/* Apply a pending packet and close the file (after EOF, an error, or an abandoned read). */
int mld_engine_close(struct mld_engine *e);
/* Export every live flow with MLD_END_CAPTURE_END (closes a file still open). */
int mld_engine_finish(struct mld_engine *e);
/* Drop the first n events of out (handed to the caller). */
void mld_engine_consume(struct mld_engine *e, size_t n);

#endif /* MLD_ENGINE_H */
