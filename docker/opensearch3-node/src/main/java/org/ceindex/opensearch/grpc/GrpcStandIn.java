package org.ceindex.opensearch.grpc;

import org.opensearch.plugins.ExtensiblePlugin;
import org.opensearch.plugins.Plugin;

/**
 * A stand-in for the transport-grpc module, which opensearch-knn 3.5.0.0 names in extended.plugins but Maven
 * Central does not serve at 3.5.0. It only exists so that k-NN can be loaded; it loads no gRPC extensions (k-NN's
 * gRPC query converter stays unused) and opens no port.
 */
public class GrpcStandIn extends Plugin implements ExtensiblePlugin {
    @Override
    public void loadExtensions(ExtensionLoader loader) {
        // nothing: no gRPC transport
    }
}
