/* xdp/flow.h — the one definition of ML Defender's flow engine, in three headers:
 *
 *   flow_types.h   portability macros; the structs crossing the kernel/user boundary (flow
 *                  key, state and event, export rules, XDP counters, blocklist key and
 *                  value), the parser's struct mld_pkt, and the constants they carry
 *   flow_parse.h   the packet parser (Ethernet/VLAN, IPv4, IPv6, TCP, UDP, ICMP, DNS)
 *   flow_update.h  flow keys, state update and the export rules
 *
 * The XDP program (xdp/flow_monitor.bpf.c, compiled by BCC with MLD_BPF defined) includes
 * this umbrella; native/ includes the headers it needs one by one. Both parse packets, key
 * flows and update flow state with the same functions, so a capture replayed offline and
 * the same traffic seen live give the same counters.
 */
#ifndef MLD_FLOW_H
#define MLD_FLOW_H

#include "flow_types.h"
#include "flow_parse.h"
#include "flow_update.h"

#endif /* MLD_FLOW_H */
