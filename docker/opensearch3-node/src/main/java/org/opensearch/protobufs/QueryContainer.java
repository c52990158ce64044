package org.opensearch.protobufs;

/**
 * ceindex stand-in for the gRPC protobuf type that k-NN's gRPC query converter names in its method signatures
 * (org.opensearch:protobufs is not served by Maven Central for 3.5); the node's injector reflects over those
 * methods, so the type must resolve. Never instantiated: the stand-in transport-grpc module runs no gRPC.
 */
public final class QueryContainer {
    /** The query kinds; only "not set" here. */
    public enum QueryContainerCase { QUERYCONTAINER_NOT_SET }

    private QueryContainer() {}
}
