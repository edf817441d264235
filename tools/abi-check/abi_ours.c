/* This project's headers. */
#include "xenpci_abi.h"
#define ABI_TABLE_FN abi_table_ours
#include "abi_side.h"
