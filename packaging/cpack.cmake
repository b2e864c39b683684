# The Debian package of byoi-agent, built with CPack's DEB generator (not dpkg-buildpackage): one
# source of truth for what is installed, the CMake install rules below.
#
#   cmake -S . -B build -G Ninja && ninja -C build && (cd build && cpack -G DEB)
#   -> build/byoi-agent_<version>_<arch>.deb
#
# Contents: /usr/sbin/byoi-agent, /lib/systemd/system/byoi-agent.service, the example config as
# the conffile /etc/byoi-agent/byoi-agent.conf (every key commented out), the JSON Schemas and
# examples of proto/ under /usr/share/byoi-agent/proto, and docs under /usr/share/doc/byoi-agent (the contract of docs/ in contract/).
# Shared-library dependencies come from dpkg-shlibdeps; the tools the agent runs are added by hand.

install(FILES ${PROJECT_SOURCE_DIR}/systemd/byoi-agent.service DESTINATION /lib/systemd/system)
install(FILES ${PROJECT_SOURCE_DIR}/systemd/byoi-agent.conf DESTINATION /etc/byoi-agent
        PERMISSIONS OWNER_READ OWNER_WRITE)
install(FILES ${PROJECT_SOURCE_DIR}/systemd/byoi-agent.conf ${PROJECT_SOURCE_DIR}/packaging/README.md
        DESTINATION share/doc/byoi-agent)
if(EXISTS ${PROJECT_SOURCE_DIR}/README.md)
  install(FILES ${PROJECT_SOURCE_DIR}/README.md DESTINATION share/doc/byoi-agent RENAME README.project.md)
endif()
install(DIRECTORY ${PROJECT_SOURCE_DIR}/docs/ DESTINATION share/doc/byoi-agent/contract)
if(EXISTS ${PROJECT_SOURCE_DIR}/proto)
  install(DIRECTORY ${PROJECT_SOURCE_DIR}/proto/ DESTINATION share/byoi-agent/proto)
endif()

set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGE_NAME byoi-agent)
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_CONTACT "byoi-agent maintainers <byoi-agent@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "install your own disk image on a bare-metal server from its rescue system")
set(CPACK_DEBIAN_PACKAGE_DESCRIPTION
    "install your own disk image on a bare-metal server from its rescue system\n\
byoi-agent runs in a netbooted rescue Linux and installs a customer's qcow2 or raw image\n\
(an OVHcloud Bring Your Own Image manifest) onto the server's disk: download into RAM, verify,\n\
convert, write, fix the GPT, add a cloud-init config drive, set UEFI boot entries, reboot.\n\
It is driven through an HTTP(S) API or by polling a provisioning backend.")
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION admin)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
# Debug info stays in the build tree; the package carries a stripped binary.
set(CPACK_STRIP_FILES ON)
# mkfs.fat and mcopy build the config drive; kexec is only for reboot = kexec.
set(CPACK_DEBIAN_PACKAGE_DEPENDS "dosfstools, mtools")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "kexec-tools")
set(CPACK_DEBIAN_PACKAGE_CONTROL_EXTRA
    ${PROJECT_SOURCE_DIR}/packaging/debian/conffiles
    ${PROJECT_SOURCE_DIR}/packaging/debian/postinst
    ${PROJECT_SOURCE_DIR}/packaging/debian/prerm
    ${PROJECT_SOURCE_DIR}/packaging/debian/postrm)
set(CPACK_DEBIAN_PACKAGE_CONTROL_STRICT_PERMISSION ON)
# Install into /usr, with /etc and /lib as given (absolute destinations above).
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
include(CPack)
