"""Node identities and the cluster port's TLS: certificates (:mod:`shoal.tls.certs`), the files a node
keeps them in (:mod:`shoal.tls.files`) and the TLS contexts (:mod:`shoal.tls.contexts`)."""
