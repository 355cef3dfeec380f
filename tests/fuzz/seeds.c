/* tests/fuzz/seeds.c — turn real captures into seed inputs for fuzz_parser.c.
 *
 * Usage: seeds OUTDIR PER_FILE CAPTURE...
 *
 * For each capture libpcap can open (pcap or pcapng) whose link type the engine supports,
 * writes the first PER_FILE packets as one-packet inputs, and those packets together as one
 * packet-train input (also in flood mode), in fuzz_parser.c's layout. Files are named by a hash of their content,
 * so identical packets from different captures give one seed. Prints the number written.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "link_layer.h"

#define TRAIN_MAX (64u * 1024u)

static unsigned written;

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    size_t i;

    for (i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

static void save(const char *outdir, const uint8_t *p, size_t n)
{
    char path[4096];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%016llx", outdir, (unsigned long long)fnv1a(p, n));
    f = fopen(path, "wbx"); /* x: an identical seed exists already */
    if (f == NULL) {
        if (errno != EEXIST) {
            perror(path);
            exit(1);
        }
        return;
    }
    if (fwrite(p, 1, n, f) != n || fclose(f) != 0) {
        perror(path);
        exit(1);
    }
    written++;
}

/* The gap byte that fuzz_parser.c decodes to about ms milliseconds. */
static uint8_t gap_byte(uint64_t ms)
{
    unsigned e;

    for (e = 0; e < 8; e++) {
        if (ms < (32ULL << e))
            return (uint8_t)((e << 5) | (ms >> e));
    }
    return 0xFF;
}

static size_t put_record(uint8_t *out, size_t cap, uint8_t gap, const uint8_t *p, size_t n)
{
    if (n > 0xFFFF)
        n = 0xFFFF;
    if (3 + n > cap)
        return 0;
    out[0] = gap;
    out[1] = (uint8_t)(n & 0xFF);
    out[2] = (uint8_t)(n >> 8);
    memcpy(out + 3, p, n);
    return 3 + n;
}

static void one_capture(const char *outdir, const char *path, long per_file)
{
    char err[PCAP_ERRBUF_SIZE];
    static uint8_t one[3 + 0x10000 + 1];
    static uint8_t train[TRAIN_MAX];
    size_t train_n = 1;
    struct pcap_pkthdr *h;
    const u_char *data;
    uint64_t prev_ms = 0;
    size_t n_idx = sizeof(mld_supported_dlts) / sizeof(mld_supported_dlts[0]);
    size_t idx;
    long count = 0;
    pcap_t *p = pcap_open_offline(path, err);

    if (p == NULL)
        return; /* not a capture (README, CSV...) */
    for (idx = 0; idx < n_idx; idx++) {
        if (mld_supported_dlts[idx] == pcap_datalink(p))
            break;
    }
    if (idx == n_idx) {
        pcap_close(p);
        return;
    }
    train[0] = (uint8_t)idx;
    while (count < per_file && pcap_next_ex(p, &h, &data) == 1) {
        uint64_t ms = (uint64_t)h->ts.tv_sec * 1000 + (uint64_t)h->ts.tv_usec / 1000;
        uint8_t gap = count == 0 || ms < prev_ms ? 0 : gap_byte(ms - prev_ms);
        size_t n;

        prev_ms = ms;
        one[0] = (uint8_t)idx;
        n = put_record(one + 1, sizeof(one) - 1, 0, data, h->caplen);
        save(outdir, one, 1 + n);
        train_n += put_record(train + train_n, sizeof(train) - train_n, gap, data, h->caplen);
        count++;
    }
    if (count > 1) {
        size_t off = 1;

        save(outdir, train, train_n);
        /* The same train in fuzz_parser.c's flood mode, each packet applied 3,969 times
         * (5,000 in all): the flow table grows past its first allocation. */
        train[0] |= 0x80;
        while (off + 3 <= train_n) {
            train[off] = 31;
            off += 3 + ((size_t)train[off + 1] | ((size_t)train[off + 2] << 8));
        }
        save(outdir, train, train_n);
    }
    pcap_close(p);
}

int main(int argc, char **argv)
{
    long per_file;
    int i;

    if (argc < 3) {
        fprintf(stderr, "usage: %s OUTDIR PER_FILE CAPTURE...\n", argv[0]);
        return 2;
    }
    per_file = strtol(argv[2], NULL, 10);
    for (i = 3; i < argc; i++)
        one_capture(argv[1], argv[i], per_file);
    printf("%u\n", written);
    return 0;
}
