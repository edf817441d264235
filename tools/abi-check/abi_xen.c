/* The system's Xen headers (libxen-dev). */
#include <stdint.h>
#include <xen/xen.h>
#include <xen/grant_table.h>
#include <xen/event_channel.h>
#include <xen/io/xenbus.h>
#include <xen/io/pciif.h>
#define ABI_TABLE_FN abi_table_xen
#include "abi_side.h"
