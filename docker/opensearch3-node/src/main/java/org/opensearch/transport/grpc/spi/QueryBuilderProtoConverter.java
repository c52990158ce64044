package org.opensearch.transport.grpc.spi;

/**
 * ceindex stand-in: opensearch-knn 3.5.0.0 creates its gRPC query converter (which implements this interface of the
 * transport-grpc module, not served by Maven Central at 3.5.0) in createComponents, so the type must exist; nothing
 * calls it, since the stand-in module runs no gRPC transport.
 */
public interface QueryBuilderProtoConverter {
}
