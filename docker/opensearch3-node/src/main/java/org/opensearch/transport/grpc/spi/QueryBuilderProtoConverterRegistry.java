package org.opensearch.transport.grpc.spi;

/** ceindex stand-in (see QueryBuilderProtoConverter): a type k-NN's converter names; never used. */
public interface QueryBuilderProtoConverterRegistry {
}
