/* xenpci_softc.c - the softcs' rows of the layout table (see xenpci_shim.h). */
#include "xenpci_softc.h"
#include "xenpci_shim.h"

#define ROW_T(t) { #t, NULL, 0, sizeof(struct t) }
#define ROW_F(t, f) { #t, #f, offsetof(struct t, f), sizeof(((struct t *)0)->f) }

static const struct xenpci_layout_row layout[] = {
    ROW_T(xpci_xenbus_softc),
    ROW_F(xpci_xenbus_softc, sc_dev), ROW_F(xpci_xenbus_softc, sc_xbusd),
    ROW_F(xpci_xenbus_softc, sc_evtchn), ROW_F(xpci_xenbus_softc, sc_backend_status),
    ROW_F(xpci_xenbus_softc, sc_shutdown), ROW_F(xpci_xenbus_softc, sc_shared),
    ROW_F(xpci_xenbus_softc, sc_shared_gntref),
    ROW_T(pciback_pci_dev),
    ROW_F(pciback_pci_dev, pb_devlist_next), ROW_F(pciback_pci_dev, pb_guest_next),
    ROW_F(pciback_pci_dev, pb_bus), ROW_F(pciback_pci_dev, pb_device),
    ROW_F(pciback_pci_dev, pb_function), ROW_F(pciback_pci_dev, pb_pc),
    ROW_F(pciback_pci_dev, pb_tag), ROW_F(pciback_pci_dev, pb_pci_softc),
    ROW_F(pciback_pci_dev, pbx_instance),
    ROW_T(pci_bar),
    ROW_F(pci_bar, b_t), ROW_F(pci_bar, b_h), ROW_F(pci_bar, b_addr),
    ROW_F(pci_bar, b_size), ROW_F(pci_bar, b_type), ROW_F(pci_bar, b_valid),
    ROW_T(pciback_pci_softc),
    ROW_F(pciback_pci_softc, sc_dev), ROW_F(pciback_pci_softc, sc_ih),
    ROW_F(pciback_pci_softc, sc_pb), ROW_F(pciback_pci_softc, sc_bars),
    ROW_F(pciback_pci_softc, sc_intrhandle), ROW_F(pciback_pci_softc, sc_irq),
    ROW_F(pciback_pci_softc, sc_id), ROW_F(pciback_pci_softc, sc_subid),
    ROW_F(pciback_pci_softc, sc_kernfsname),
    ROW_T(pb_xenbus_instance),
    ROW_F(pb_xenbus_instance, pbx_next), ROW_F(pb_xenbus_instance, pbx_xbusd),
    ROW_F(pb_xenbus_instance, pbx_domid), ROW_F(pb_xenbus_instance, pbx_pb_pci_dev),
    ROW_F(pb_xenbus_instance, pbx_evtchn), ROW_F(pb_xenbus_instance, pbx_ih),
    ROW_F(pb_xenbus_instance, pbx_sh_info), ROW_F(pb_xenbus_instance, op),
    ROW_F(pb_xenbus_instance, pbx_shinfo_handle),
};

const struct xenpci_layout_row *xenpci_softc_layout_table(size_t *count)
{
    *count = sizeof(layout) / sizeof(layout[0]);
    return layout;
}
